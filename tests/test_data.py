import datasets
import numpy as np
import pytest
import torch

from hf_metaprune import load_image_classification
from hf_metaprune.data import ImageCollator, accuracy

from conftest import CIFAR10


def test_local_parquet_folder_gives_disjoint_deterministic_splits(cifar_small):
    data = cifar_small
    assert (len(data.train), len(data.validation), len(data.test)) == (1500, 500, 500)
    assert data.num_classes == 10 and data.image_size == 32
    assert data.train.images.dtype == torch.uint8 and data.train.images.shape[1:] == (3, 32, 32)
    again = load_image_classification(CIFAR10, val_size=500, max_train_samples=2000, max_test_samples=10)
    assert torch.equal(again.validation.images, data.validation.images)
    other = load_image_classification(CIFAR10, val_size=500, max_train_samples=2000, max_test_samples=10, seed=1)
    assert not torch.equal(other.validation.labels, data.validation.labels)
    # no validation image is also a training image
    train_keys = {hash(img.numpy().tobytes()) for img in data.train.images}
    assert not any(hash(img.numpy().tobytes()) in train_keys for img in data.validation.images)


def test_single_parquet_file_and_fractional_val_size():
    data = load_image_classification(f"{CIFAR10}/train.parquet", val_size=0.1, max_train_samples=300)
    assert (len(data.train), len(data.validation), data.test) == (270, 30, None)


def test_augmentation_crops_flips_and_normalises():
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    items = [{"pixel_values": im, "labels": 1} for im in images]
    plain = ImageCollator((0.5,) * 3, (0.25,) * 3)(items)
    assert torch.allclose(plain["pixel_values"], (images.float() / 255 - 0.5) / 0.25)
    aug = ImageCollator((0.5,) * 3, (0.25,) * 3, augment=True, generator=torch.Generator().manual_seed(0))(items)
    assert aug["pixel_values"].shape == (64, 3, 32, 32) and aug["labels"].tolist() == [1] * 64
    assert not torch.allclose(aug["pixel_values"], plain["pixel_values"])
    # every augmented image is a shifted (padded) and possibly flipped copy: its centre 24x24 matches somewhere
    x, a = plain["pixel_values"][0], aug["pixel_values"][0]
    candidates = [x, x.flip(-1)]
    assert any(torch.allclose(a[:, 8:24, 8:24], c[:, 8 + dy:24 + dy, 8 + dx:24 + dx])
               for c in candidates for dy in range(-4, 5) for dx in range(-4, 5))


def test_unreachable_dataset_names_the_option_to_pass(monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError, match="--dataset"):
        load_image_classification("no-such-user/no-such-dataset")
    with pytest.raises(FileNotFoundError, match="--dataset"):
        load_image_classification("/nonexistent/folder/cifar10")


def test_impossible_validation_size_is_a_value_error():
    with pytest.raises(ValueError, match="val_size"):
        load_image_classification(CIFAR10, val_size=100, max_train_samples=100)


def test_accuracy_metric_works_offline():
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert accuracy((logits, np.array([1, 0, 0]))) == {"accuracy": pytest.approx(2 / 3)}


def test_real_datasets_expose_their_class_names(cifar_small):
    assert cifar_small.class_names[:3] == ("airplane", "automobile", "bird") and len(cifar_small.class_names) == 10
    from hf_metaprune import load_text_classification

    trec = load_text_classification(CIFAR10.replace("cifar10", "trec"), val_size=50, max_train_samples=300,
                                    max_test_samples=50, vocab_size=200)
    assert trec.class_names == ("ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM") and trec.num_classes == 6
    assert trec.test.labels.tolist()[:5] == [5, 4, 3, 2, 5]  # coarse_label of the first rows of test.parquet
