import pytest
import timm
import torch

import hf_metaprune  # noqa: F401


@pytest.mark.parametrize("name,params", [("cifar_resnet20", 0.27), ("cifar_resnet32", 0.46),
                                         ("cifar_resnet56", 0.85), ("cifar_resnet110", 1.73)])
def test_cifar_resnets_registered_with_timm(name, params):
    model = timm.create_model(name, num_classes=10)
    assert name in timm.list_models("cifar_*")
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert abs(sum(p.numel() for p in model.parameters()) / 1e6 - params) < 0.01
    # projection shortcut (1x1 conv + BN) exactly where the shape changes
    assert model.layer2[0].downsample is not None and model.layer2[1].downsample is None
    assert model.layer1[0].downsample is None


def test_cifar_vgg19_bn():
    model = timm.create_model("cifar_vgg19_bn", num_classes=100)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(convs) == 16 and len(bns) == 16


def test_pretrained_weights_are_refused_clearly():
    with pytest.raises(ValueError, match="pretrained=False"):
        timm.create_model("cifar_resnet20", pretrained=True)


def test_bad_depth():
    with pytest.raises(ValueError, match="6n\\+2"):
        hf_metaprune.models.CifarResNet(depth=21)
