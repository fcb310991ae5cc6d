"""Image-classification data through 🤗 ``datasets``: a Hub id or a local folder of parquet files, one code path.

Images are decoded once into a uint8 tensor (CIFAR-10 train: 150 MB, ~5 s) and augmented per batch in the
collator (random crop with zero padding, horizontal flip, normalisation). Decoding every image on every epoch
would cost more CPU than training a CIFAR ResNet-20 on two cores.
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass

import datasets
import numpy as np
import torch
import torch.nn.functional as F

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGE_COLUMNS, LABEL_COLUMNS = ("img", "image", "pixel_values"), ("label", "labels", "fine_label")


class TensorImageDataset(torch.utils.data.Dataset):
    """Decoded images (uint8 ``[N, C, H, W]``) and integer labels; items are dicts for the Trainer."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        if images.dtype != torch.uint8 or images.dim() != 4 or len(images) != len(labels):
            raise ValueError("images must be uint8 [N, C, H, W] with one label per image")
        self.images, self.labels = images, labels.long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.images[i], "labels": self.labels[i]}

    def subset(self, n: int) -> "TensorImageDataset":
        return TensorImageDataset(self.images[:n], self.labels[:n])


@dataclass
class ImageClassificationData:
    """Train / validation (carved deterministically from train) / test splits and how to normalise them."""

    train: TensorImageDataset
    validation: TensorImageDataset
    test: TensorImageDataset | None
    num_classes: int
    mean: tuple[float, ...] = CIFAR10_MEAN
    std: tuple[float, ...] = CIFAR10_STD

    @property
    def image_size(self) -> int:
        return self.train.images.shape[-1]

    def collator(self, augment: bool = False, generator: torch.Generator | None = None) -> "ImageCollator":
        return ImageCollator(self.mean, self.std, augment=augment, generator=generator)

    def example_inputs(self, batch_size: int = 1) -> torch.Tensor:
        """A normalised batch of validation images, for tracing and MACs counting."""
        return self.collator()([self.validation[i] for i in range(batch_size)])["pixel_values"]


class ImageCollator:
    """Stack, augment (random crop with ``padding`` + horizontal flip) and normalise a list of items."""

    def __init__(self, mean, std, augment: bool = False, padding: int = 4, generator: torch.Generator | None = None):
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)
        self.augment, self.padding, self.generator = augment, padding, generator

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        x = torch.stack([it["pixel_values"] for it in items]).float().div_(255)
        y = torch.stack([torch.as_tensor(it["labels"]) for it in items]).long()
        if self.augment:
            x = self._augment(x)
        return {"pixel_values": (x - self.mean) / self.std, "labels": y}

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        p, g = self.padding, self.generator
        padded = F.pad(x, (p, p, p, p))
        dy = torch.randint(0, 2 * p + 1, (n,), generator=g)
        dx = torch.randint(0, 2 * p + 1, (n,), generator=g)
        rows = (dy.view(n, 1) + torch.arange(h)).view(n, 1, h, 1).expand(n, x.shape[1], h, w + 2 * p)
        x = padded.gather(2, rows)
        cols = (dx.view(n, 1) + torch.arange(w)).view(n, 1, 1, w).expand(n, x.shape[1], h, w)
        x = x.gather(3, cols)
        flip = torch.rand(n, generator=g) < 0.5
        return torch.where(flip.view(n, 1, 1, 1), x.flip(3), x)


def load_image_classification(
    source: str,
    val_size: int | float = 5000,
    seed: int = 0,
    max_train_samples: int | None = None,
    max_test_samples: int | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    mean: tuple[float, ...] = CIFAR10_MEAN,
    std: tuple[float, ...] = CIFAR10_STD,
) -> ImageClassificationData:
    """Load an image-classification dataset from a local folder / parquet file or a Hub id (e.g. ``uoft-cs/cifar10``).

    The validation split is ``val_size`` examples (or a fraction) drawn from train with a seeded permutation;
    the test split is only ever used for final numbers. ``max_*_samples`` take the first rows before decoding.
    """
    raw = _load_raw(source)
    if "train" not in raw:
        raise ValueError(f"dataset '{source}' has no 'train' split (found {list(raw)})")
    image_column = image_column or _pick_column(raw["train"], IMAGE_COLUMNS, "image", source)
    label_column = label_column or _pick_column(raw["train"], LABEL_COLUMNS, "label", source)
    train = raw["train"]
    if max_train_samples is not None:
        train = train.select(range(min(max_train_samples, len(train))))
    images, labels = _decode(train, image_column, label_column)
    n_val = int(round(val_size * len(labels))) if isinstance(val_size, float) else int(val_size)
    if not 0 < n_val < len(labels):
        raise ValueError(f"val_size={val_size} leaves no training or no validation examples "
                         f"({len(labels)} training rows)")
    order = torch.from_numpy(np.random.default_rng(seed).permutation(len(labels)))
    val_idx, train_idx = order[:n_val], order[n_val:]
    test = None
    if "test" in raw:
        test_split = raw["test"]
        if max_test_samples is not None:
            test_split = test_split.select(range(min(max_test_samples, len(test_split))))
        test = TensorImageDataset(*_decode(test_split, image_column, label_column))
    feature = raw["train"].features.get(label_column)
    num_classes = feature.num_classes if isinstance(feature, datasets.ClassLabel) else int(labels.max()) + 1
    return ImageClassificationData(
        TensorImageDataset(images[train_idx], labels[train_idx]),
        TensorImageDataset(images[val_idx], labels[val_idx]),
        test, num_classes, tuple(mean), tuple(std))


def _load_raw(source: str) -> datasets.DatasetDict:
    path = os.path.expanduser(str(source))
    if os.path.isdir(path):
        files = sorted(glob.glob(os.path.join(path, "*.parquet")))
        splits = {os.path.basename(f).split(".")[0].split("-")[0]: f for f in files}
        if not splits:
            raise FileNotFoundError(f"no .parquet files in '{path}'; expected e.g. train.parquet and test.parquet")
        return datasets.load_dataset("parquet", data_files=splits)
    if os.path.isfile(path):
        return datasets.load_dataset("parquet", data_files={"train": path})
    try:
        return datasets.load_dataset(source)
    except Exception as e:  # offline, unknown repo, no permission: all end here
        raise FileNotFoundError(
            f"could not load dataset '{source}': it is not a local folder or parquet file, and loading it from "
            f"the Hugging Face Hub failed ({type(e).__name__}: {e}). Pass a local folder of parquet files with "
            "image and label columns via --dataset (e.g. --dataset ../shared/data/cifar10), or a Hub id when "
            "online.") from e


def _pick_column(split: datasets.Dataset, candidates: tuple[str, ...], what: str, source: str) -> str:
    for name in candidates:
        if name in split.column_names:
            return name
    raise ValueError(f"dataset '{source}' has no {what} column among {list(candidates)} (columns: "
                     f"{split.column_names}); pass {what}_column=...")


def _decode(split: datasets.Dataset, image_column: str, label_column: str) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for batch in split.select_columns([image_column, label_column]).with_format("numpy").iter(batch_size=4096):
        imgs = batch[image_column]
        if imgs.dtype == object:  # images of different sizes cannot be stacked
            raise ValueError(f"images in column '{image_column}' differ in size; resize them first")
        if imgs.ndim == 3:  # grayscale
            imgs = imgs[..., None]
        images.append(torch.from_numpy(np.ascontiguousarray(imgs)).permute(0, 3, 1, 2))
        labels.append(torch.from_numpy(np.asarray(batch[label_column], dtype=np.int64)))
    return torch.cat(images).contiguous(), torch.cat(labels)


def accuracy(eval_pred) -> dict[str, float]:
    """``compute_metrics`` for a Trainer: top-1 accuracy, computed locally (no Hub metric script)."""
    logits, labels = eval_pred
    logits = logits[0] if isinstance(logits, (tuple, list)) else logits
    return {"accuracy": float((np.asarray(logits).argmax(-1) == np.asarray(labels)).mean())}
