import os
import warnings

import pytest
import timm
import torch

import hf_metaprune  # noqa: F401  (registers the CIFAR models)

warnings.filterwarnings("ignore", message=".*unwrapped.*")

# (timm name, input resolution): every CNN the graph adapter and pruning must support.
CNNS = [
    ("cifar_resnet20", 32),
    ("cifar_resnet56", 32),
    ("cifar_vgg19_bn", 32),
    ("resnet18", 64),
    ("resnet50", 64),
    ("mobilenetv2_100", 64),
    ("efficientnet_b0", 64),
    ("regnetx_002", 64),
    ("convnext_atto", 64),
    ("vgg11_bn", 64),
]


def make_model(name: str, num_classes: int = 10, seed: int = 0) -> torch.nn.Module:
    """A model with non-trivial BN statistics, so buffers are checked for real."""
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, num_classes=num_classes).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.num_batches_tracked.fill_(11)
    return model


def example_input(res: int) -> torch.Tensor:
    return torch.randn(1, 3, res, res, generator=torch.Generator().manual_seed(1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


CIFAR10 = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "cifar10")


@pytest.fixture(scope="session")
def cifar_small():
    """2,000 real CIFAR-10 training images (500 held out for validation) and 500 test images."""
    from hf_metaprune import load_image_classification

    return load_image_classification(CIFAR10, val_size=500, max_train_samples=2000, max_test_samples=500)


@pytest.fixture(scope="session")
def tiny_zoo(cifar_small, tmp_path_factory):
    """Three briefly trained CIFAR ResNet-20 data models (about 10 s in all)."""
    from hf_metaprune import train_zoo

    out = tmp_path_factory.mktemp("zoo")
    return train_zoo("cifar_resnet20", cifar_small, str(out), num_models=3, epochs=2, batch_size=64,
                     learning_rate=0.05, disable_tqdm=True, logging_steps=1000, save_strategy="no",
                     eval_strategy="no", load_best_model_at_end=False)
