"""Classification data through 🤗 ``datasets``: a Hub id or a local folder of parquet files, one code path.

Images are decoded once into a uint8 tensor (CIFAR-10 train: 150 MB, ~5 s) and augmented per batch in the
collator (random crop with zero padding, horizontal flip, normalisation). Decoding every image on every epoch
would cost more CPU than training a CIFAR ResNet-20 on two cores. Texts are tokenized once (with a given
tokenizer, or a WordPiece vocabulary trained on the training split when none is reachable offline) and padded
per batch. Both kinds expose the same interface (splits, ``collator``, ``example_inputs``, ``num_classes``), so
finetuning, meta-training and the pruning pipeline take either. Any text column also serves as a causal-LM corpus
(:func:`load_text_corpus`: token blocks, for decoder LLMs).

Bad input fails at load time with an error naming the file, split, column and row and what was expected: files
named after no split, missing shards, empty or unreadable parquet files, missing / non-integer / out-of-range labels,
test classes never seen in training, undecodable or missing images and texts. Labels are checked with Arrow and
numpy over whole columns; only a failing batch of images is decoded again row by row, to find the bad row.
"""
from __future__ import annotations

import glob
import numbers
import os
import re
from dataclasses import dataclass
from typing import NoReturn

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGE_COLUMNS, LABEL_COLUMNS = ("img", "image", "pixel_values"), ("label", "labels", "fine_label")
TEXT_COLUMNS, TEXT_LABEL_COLUMNS = ("text", "sentence", "content"), ("label", "labels", "coarse_label")


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
    class_names: tuple[str, ...] | None = None  # id -> name, from a ClassLabel feature or sorted string labels

    @property
    def image_size(self) -> int:
        return self.train.images.shape[-1]

    def collator(self, augment: bool = False, generator: torch.Generator | None = None) -> "ImageCollator":
        return ImageCollator(self.mean, self.std, augment=augment, generator=generator)

    def select_classes(self, classes) -> "ImageClassificationData":
        """The same splits restricted to ``classes`` (ids of this dataset), relabelled ``0..len(classes)-1`` in
        the order given: a task of a class split (a reference set of classes, an unseen target set)."""
        classes = [int(c) for c in classes] if not isinstance(classes, (str, bytes)) else classes
        if (not isinstance(classes, list) or not classes or len(set(classes)) != len(classes)
                or not all(0 <= c < self.num_classes for c in classes)):
            raise ValueError(f"select_classes: classes must be distinct class ids in 0..{self.num_classes - 1}, got "
                             f"{classes!r}")
        lookup = torch.full((self.num_classes,), -1, dtype=torch.long)
        lookup[torch.tensor(classes)] = torch.arange(len(classes))

        def pick(split: TensorImageDataset | None) -> TensorImageDataset | None:
            if split is None:
                return None
            keep = lookup[split.labels] >= 0
            return TensorImageDataset(split.images[keep], lookup[split.labels[keep]])

        names = tuple(self.class_names[c] for c in classes) if self.class_names else None
        return ImageClassificationData(pick(self.train), pick(self.validation), pick(self.test), len(classes),
                                       self.mean, self.std, names)

    def example_inputs(self, batch_size: int = 1, device: torch.device | str | None = None) -> torch.Tensor:
        """A normalised batch of validation images, for tracing and MACs counting."""
        return self.collator()([self.validation[i] for i in range(batch_size)])["pixel_values"].to(device)


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
    Encoded images are converted to as many channels as ``mean`` has values (1: grayscale, 3: RGB — RGBA, palette
    and grayscale images included, alpha dropped —, 4: RGBA), so the channel count always matches the
    normalisation. Labels are checked as described in :func:`_labels`.
    """
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    if not mean or len(mean) != len(std) or min(std) <= 0:
        raise ValueError(f"mean={mean} and std={std} must give one value per image channel, std all positive")
    splits = _load_splits(source, val_size, max_train_samples, max_test_samples, ("image", IMAGE_COLUMNS),
                          image_column, LABEL_COLUMNS, label_column)
    images = _decode_images(splits.train, splits.input_column, len(mean))
    labels = splits.labels["train"]
    train_idx, val_idx = _carve_validation(len(labels), val_size, seed)
    test = None
    if splits.test is not None:
        test = TensorImageDataset(_decode_images(splits.test, splits.input_column, len(mean)), splits.labels["test"])
    return ImageClassificationData(
        TensorImageDataset(images[train_idx], labels[train_idx]),
        TensorImageDataset(images[val_idx], labels[val_idx]),
        test, splits.num_classes, mean, std, splits.class_names)


def _carve_validation(n: int, val_size: int | float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the training and validation examples: a seeded permutation of the training split."""
    n_val = int(val_size) if isinstance(val_size, numbers.Integral) else int(round(val_size * n))
    if not 0 < n_val < n:
        raise ValueError(f"val_size={val_size} leaves no training or no validation examples ({n} training rows)")
    order = torch.from_numpy(np.random.default_rng(seed).permutation(n))
    return order[n_val:], order[:n_val]


def _check_arguments(val_size: int | float, max_train_samples: int | None, max_test_samples: int | None) -> None:
    """Refuse sizes that would silently give an empty or surprising split, before any data is read."""
    if isinstance(val_size, bool) or not isinstance(val_size, numbers.Real):
        raise TypeError(f"val_size must be an int (a number of rows) or a float in (0, 1) (a fraction), "
                        f"got {val_size!r}")
    if not isinstance(val_size, numbers.Integral) and not 0 < val_size < 1:
        raise ValueError(f"val_size={val_size}: a float val_size is a fraction of the training rows, in (0, 1); "
                         "pass an int for a number of rows")
    for name, value in (("max_train_samples", max_train_samples), ("max_test_samples", max_test_samples)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must be a positive int or None (all rows), got {value!r}")
        if value < 1:
            raise ValueError(f"{name}={value}: must be a positive int, or None for all rows")


@dataclass
class _Split:
    """A loaded split and what an error message needs to point at one of its rows: its name and its files."""

    name: str
    data: datasets.Dataset
    files: list[tuple[str, int]]  # (parquet file, rows) in row order; empty for a Hub dataset

    def where(self, column: str, row: int) -> str:
        """'train split, column 'label', row 7 (row 2 of .../train-00001-of-00002.parquet)'."""
        at = f"{self.name} split, column '{column}', row {row}"
        offset = row
        for path, rows in self.files:
            if offset < rows:
                return f"{at} (row {offset} of {path})"
            offset -= rows
        return at

    def column(self, column: str) -> pa.ChunkedArray:
        """The raw Arrow column (no decoding): cheap, vectorised checks on every row."""
        return self.data.select_columns([column]).with_format("arrow")[:].column(column)

    def head(self, n: int | None) -> "_Split":
        return self if n is None or n >= len(self.data) else _Split(self.name, self.data.select(range(n)), self.files)


@dataclass
class _Splits:
    """Train and test (first ``max_*_samples`` rows), their checked labels and the label space train defines."""

    train: _Split
    test: _Split | None
    input_column: str
    labels: dict[str, torch.Tensor]
    num_classes: int
    class_names: tuple[str, ...] | None


def _load_splits(source: str, val_size: int | float, max_train_samples: int | None, max_test_samples: int | None,
                 input_kind: tuple[str, tuple[str, ...]], input_column: str | None,
                 label_candidates: tuple[str, ...], label_column: str | None) -> _Splits:
    """What both loaders share: check the arguments, load train / test, pick and check the columns and labels."""
    _check_arguments(val_size, max_train_samples, max_test_samples)
    raw, files = _load_with_train(source)
    what, candidates = input_kind
    input_column = input_column or _pick_column(raw["train"], candidates, what, source)
    label_column = label_column or _pick_column(raw["train"], label_candidates, "label", source)
    splits = {name: _Split(name, raw[name], files.get(name, [])) for name in ("train", "test") if name in raw}
    for split in splits.values():
        for column, kind in ((input_column, what), (label_column, "label")):
            if column not in split.data.column_names:
                raise ValueError(f"the {split.name} split of '{source}' has no {kind} column '{column}' "
                                 f"(columns: {split.data.column_names})")
        if len(split.data) == 0:
            raise ValueError(f"the {split.name} split of '{source}' has no rows")
    labels, num_classes, class_names = _labels(splits["train"], splits.get("test"), label_column)
    heads = {"train": max_train_samples, "test": max_test_samples}
    splits = {name: split.head(heads[name]) for name, split in splits.items()}
    labels = {name: ids[:len(splits[name].data)] for name, ids in labels.items()}
    return _Splits(splits["train"], splits.get("test"), input_column, labels, num_classes, class_names)


def _load_with_train(source: str) -> tuple[datasets.DatasetDict, dict[str, list[tuple[str, int]]]]:
    """:func:`_load_raw`, refusing a dataset without a train split."""
    raw, files = _load_raw(source)
    if "train" not in raw:
        raise ValueError(f"dataset '{source}' has no 'train' split (found {list(raw)}); name its files "
                         "train.parquet and test.parquet, or train-00000-of-00002.parquet ... (the Hub layout)")
    return raw, files


def _labels(train: _Split, test: _Split | None, column: str
            ) -> tuple[dict[str, torch.Tensor], int, tuple[str, ...] | None]:
    """Checked class ids of every row of train (and test), the number of classes and their names.

    Train defines the classes: a ClassLabel feature gives them with their names; string labels are classes named by
    the sorted distinct strings of train (ids in that order, the same in test); otherwise ``num_classes`` is the
    largest train label + 1, so a larger test label is a class never seen in training — an error, not a silently
    wrong accuracy. Floats are accepted when whole (3.0 is class 3), never rounded.
    """
    feature = train.data.features[column]
    names = None
    if isinstance(feature, datasets.ClassLabel):
        names = tuple(feature.names)
    else:
        values = train.column(column)
        if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
            names = tuple(sorted(pc.unique(values.drop_null()).to_pylist()))
    ids = {"train": _label_ids(train, column, names, len(names) if names else None)}
    num_classes = len(names) if names else int(ids["train"].max()) + 1
    if test is not None:
        test_feature = test.data.features[column]
        if isinstance(test_feature, datasets.ClassLabel) and names is not None and tuple(test_feature.names) != names:
            raise ValueError(f"the test split's ClassLabel column '{column}' names the classes "
                             f"{test_feature.names}, the train split {list(names)}: they must be the same")
        ids["test"] = _label_ids(test, column, names, num_classes, inferred=names is None)
    return ids, num_classes, names


def _label_ids(split: _Split, column: str, names: tuple[str, ...] | None, num_classes: int | None,
               inferred: bool = False) -> torch.Tensor:
    """Every label of ``split`` as a class id in ``[0, num_classes)``, checked with Arrow / numpy (no Python loop);
    the first offending row is named. String labels are looked up in ``names``."""
    values = split.column(column)
    if values.null_count:
        row = _first(pc.is_null(values))
        raise ValueError(f"{split.where(column, row)}: the label is missing (null); every example needs a class id")
    kind = values.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        if names is None:
            raise TypeError(f"{split.where(column, 0)}: string label {values[0].as_py()!r}, but the train split's "
                            "labels are integer class ids; use one kind of label in every split")
        ids = pc.fill_null(pc.index_in(values, value_set=pa.array(names, kind)), -1).to_numpy()
        if (ids < 0).any():
            row = _first(ids < 0)
            raise ValueError(f"{split.where(column, row)}: label {values[row].as_py()!r} is not a class of the train "
                             f"split (classes: {list(names)[:20]}{' ...' if len(names) > 20 else ''})")
        return torch.from_numpy(ids.astype(np.int64))
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
        raise TypeError(f"{split.name} split, column '{column}' holds {kind}; expected integer class ids or "
                        "class-name strings")
    ids = values.to_numpy()
    if pa.types.is_floating(kind) and not (np.isfinite(ids) & (ids == np.floor(ids))).all():
        row = _first(~(np.isfinite(ids) & (ids == np.floor(ids))))
        raise ValueError(f"{split.where(column, row)}: label {ids[row]} is not a whole number; labels are class ids "
                         "0, 1, ... (whole floats such as 3.0 are accepted)")
    if (ids < 0).any():
        row = _first(ids < 0)
        hint = " (-1 usually marks an unlabeled example, as in a hidden test set)" if ids[row] == -1 else ""
        raise ValueError(f"{split.where(column, row)}: label {ids[row]} is negative; labels are class ids 0, 1, "
                         f"...{hint}")
    if num_classes is not None and (ids >= num_classes).any():
        row = _first(ids >= num_classes)
        if inferred:
            raise ValueError(f"{split.where(column, row)}: label {ids[row]} is a class never seen in the train split "
                             f"(its labels go up to {num_classes - 1}, so num_classes={num_classes})")
        raise ValueError(f"{split.where(column, row)}: label {ids[row]} is outside [0, {num_classes}), the "
                         f"{num_classes} classes of the train split's ClassLabel feature")
    return torch.from_numpy(ids.astype(np.int64))


def _first(mask: np.ndarray | pa.ChunkedArray) -> int:
    """Index of the first true entry of a boolean numpy or Arrow array (the offending row an error names)."""
    return int(np.flatnonzero(mask.to_numpy() if isinstance(mask, pa.ChunkedArray) else mask)[0])


_SPLIT_FILE = re.compile(r"(?P<split>[A-Za-z]\w*?)(?:-(?P<shard>\d+)-of-(?P<shards>\d+)(?:-\w+)?)?\.parquet")


def _split_files(folder: str) -> dict[str, list[str]]:
    """The parquet files of each split in ``folder`` (or its ``data/`` subfolder, the Hub layout), shards in order.

    A file is named after its split: ``train.parquet`` or, sharded, ``train-00000-of-00002.parquet``. A name that
    gives no split, a missing shard or a split given both whole and sharded is an error: guessing would load the
    wrong rows.
    """
    files = sorted(glob.glob(os.path.join(folder, "*.parquet"))) or sorted(
        glob.glob(os.path.join(folder, "data", "*.parquet")))
    if not files:
        raise FileNotFoundError(f"no .parquet files in '{folder}' or '{os.path.join(folder, 'data')}'; expected "
                                "e.g. train.parquet and test.parquet")
    found: dict[str, list[tuple[str, re.Match]]] = {}
    for path in files:
        match = _SPLIT_FILE.fullmatch(os.path.basename(path))
        if match is None:
            raise ValueError(f"cannot tell which split '{path}' holds: name the files <split>.parquet or "
                             "<split>-00000-of-00002.parquet (the Hub layout), e.g. train.parquet and test.parquet")
        found.setdefault(match["split"], []).append((path, match))
    splits = {}
    for split, entries in found.items():
        sharded = [(int(m["shard"]), int(m["shards"]), p) for p, m in entries if m["shards"] is not None]
        if not sharded:
            splits[split] = [p for p, _ in entries]
            continue
        if len(sharded) != len(entries):
            raise ValueError(f"the {split} split is given both whole and in shards ({[p for p, _ in entries]}); "
                             "keep one of them")
        counts = {n for _, n, _ in sharded}
        indices = sorted(i for i, _, _ in sharded)
        if len(counts) != 1 or indices != list(range(counts.pop())):
            raise ValueError(f"the shards of the {split} split are incomplete or inconsistent: "
                             f"{[os.path.basename(p) for _, _, p in sorted(sharded)]}; expected "
                             f"{split}-00000-of-N.parquet ... {split}-(N-1)-of-N.parquet, each exactly once")
        splits[split] = [p for _, _, p in sorted(sharded)]
    return splits


def _count_rows(split: str, paths: list[str]) -> list[tuple[str, int]]:
    """The rows of each parquet file of a split, from the footers only; unreadable files, files whose columns differ
    from the first one's and a split with no rows at all are errors that name the files."""
    counted, first = [], None
    for path in paths:
        try:
            meta = pq.read_metadata(path)
        except (pa.ArrowException, OSError) as e:
            raise ValueError(f"'{path}' ({split} split) is not a readable parquet file: {e}") from e
        schema = meta.schema.to_arrow_schema()
        layout = ([(f.name, str(f.type)) for f in schema], (schema.metadata or {}).get(b"huggingface"))
        if first is None:
            first = layout
        elif layout != first:
            raise ValueError(f"'{path}' has the columns {layout[0]} but '{paths[0]}' has {first[0]} (or their 🤗 "
                             f"features differ); every file of the {split} split needs the same columns and features")
        counted.append((path, meta.num_rows))
    if not sum(rows for _, rows in counted):
        raise ValueError(f"the {split} split has no rows: {paths} hold 0 rows")
    return counted


def _load_raw(source: str) -> tuple[datasets.DatasetDict, dict[str, list[tuple[str, int]]]]:
    """The splits of ``source`` and, when local, each split's parquet files with their row counts."""
    path = os.path.expanduser(str(source))
    if os.path.isdir(path) or os.path.isfile(path):
        files = _split_files(path) if os.path.isdir(path) else {"train": [path]}
        counted = {split: _count_rows(split, paths) for split, paths in files.items()}
        # One split at a time: loaded together, 🤗 datasets casts every split to the first one's columns, turning
        # integer train labels into strings or failing when test lacks a column. Files without rows hold nothing
        # to load (and datasets fails on them).
        raw = datasets.DatasetDict({split: datasets.load_dataset("parquet", split=split, data_files={
            split: [p for p, n in rows if n]}) for split, rows in counted.items()})
        return raw, counted
    try:
        return datasets.load_dataset(source), {}
    except Exception as e:  # offline, unknown repo, no permission: all end here
        raise FileNotFoundError(
            f"could not load dataset '{source}': it is not a local folder or parquet file, and loading it from "
            f"the Hugging Face Hub failed ({type(e).__name__}: {e}). Pass a local folder of parquet files with "
            "input and label columns via --dataset (e.g. --dataset ../shared/data/cifar10 or ../shared/data/trec), "
            "or a Hub id when online.") from e


def _pick_column(split: datasets.Dataset, candidates: tuple[str, ...], what: str, source: str) -> str:
    for name in candidates:
        if name in split.column_names:
            return name
    raise ValueError(f"dataset '{source}' has no {what} column among {list(candidates)} (columns: "
                     f"{split.column_names}); pass {what}_column=...")


_IMAGE_MODES = {1: "L", 3: "RGB", 4: "RGBA"}  # channels -> the PIL mode encoded images are converted to


def _decode_images(split: _Split, column: str, channels: int) -> torch.Tensor:
    """Every image of ``split`` decoded once into uint8 ``[N, C, H, W]``.

    Encoded images (a 🤗 Image feature, or bytes) are converted to ``channels``; pixel arrays (``H x W [x C]``) are
    taken as they are and must have ``channels``. Batches are decoded by 🤗 ``datasets``; only when one fails is it
    decoded again row by row, to name the offending row.
    """
    data = split.data.select_columns([column])
    feature = data.features[column]
    if isinstance(feature, datasets.Image) or feature == datasets.Value("binary") or (
            isinstance(feature, dict) and set(feature) == {"bytes", "path"}):
        if channels not in _IMAGE_MODES:
            raise ValueError(f"mean/std have {channels} values, but images decode to 1 (grayscale), 3 (RGB) or 4 "
                             "(RGBA) channels")
        data = data.cast_column(column, datasets.Image(mode=_IMAGE_MODES[channels]))
    values = split.column(column)
    if values.null_count:
        raise ValueError(f"{split.where(column, _first(pc.is_null(values)))}: the image is missing (null)")
    rows, batches, shape = data.with_format("numpy"), [], None
    for start in range(0, len(rows), 4096):
        stop = min(start + 4096, len(rows))
        try:
            batch = rows[start:stop][column]
        except Exception as e:  # an undecodable image somewhere in the batch: find which
            _raise_undecodable(split, column, rows, start, stop, e)
        shape = np.shape(batch[0]) if shape is None else shape
        if batch.dtype == object or batch.shape[1:] != shape:
            row = start + next((i for i, im in enumerate(batch) if np.shape(im) != shape), 0)
            raise ValueError(f"{split.where(column, row)}: image of shape {np.shape(batch[row - start])}, but row 0 "
                             f"has {shape}; all images must have one size and layout (resize them first)")
        # 🤗 datasets formats integer pixel arrays as int64, even uint8 ones: take integers that fit in 0..255
        if batch.ndim not in (3, 4) or not (batch.dtype == np.uint8 or (
                np.issubdtype(batch.dtype, np.integer) and 0 <= batch.min() and batch.max() <= 255)):
            raise TypeError(f"{split.name} split, column '{column}': images are {batch.dtype} arrays of shape "
                            f"{batch.shape[1:]}; expected encoded images or H x W [x C] arrays of pixels in 0..255")
        batch = batch.astype(np.uint8, copy=False)
        batches.append(torch.from_numpy(np.ascontiguousarray(batch if batch.ndim == 4 else batch[..., None])))
    images = torch.cat(batches).permute(0, 3, 1, 2).contiguous()
    if images.shape[1] != channels:
        raise ValueError(f"{split.name} split, column '{column}': images have {images.shape[1]} channels, but "
                         f"mean/std have {channels} values")
    return images


def _raise_undecodable(split: _Split, column: str, rows: datasets.Dataset, start: int, stop: int,
                       error: Exception) -> NoReturn:
    """Decode rows ``start:stop`` one by one and raise an error naming the first that fails."""
    for row in range(start, stop):
        try:
            rows[row]
        except Exception as e:
            raise ValueError(f"{split.where(column, row)}: cannot decode the image "
                             f"({type(e).__name__}: {e})") from e
    raise ValueError(f"{split.name} split, column '{column}': cannot decode rows {start}-{stop - 1} "
                     f"({type(error).__name__}: {error})") from error


def _texts(split: _Split, column: str) -> list[str]:
    """Every text of ``split``, checked: strings, none missing (a tokenizer fails obscurely on None)."""
    values = split.column(column)
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        raise TypeError(f"{split.name} split, column '{column}' holds {values.type}; expected text (strings)")
    if values.null_count:
        raise ValueError(f"{split.where(column, _first(pc.is_null(values)))}: the text is missing (null)")
    return values.to_pylist()


def accuracy(eval_pred) -> dict[str, float]:
    """``compute_metrics`` for a Trainer: top-1 accuracy, computed locally (no Hub metric script)."""
    logits, labels = eval_pred
    logits = logits[0] if isinstance(logits, (tuple, list)) else logits
    return {"accuracy": float((np.asarray(logits).argmax(-1) == np.asarray(labels)).mean())}


class TokenizedTextDataset(torch.utils.data.Dataset):
    """Token ids (one 1-D LongTensor per text, truncated) and integer labels; items are dicts for the Trainer."""

    def __init__(self, input_ids: list[torch.Tensor], labels: torch.Tensor):
        if len(input_ids) != len(labels):
            raise ValueError("need one label per text")
        self.input_ids, self.labels = input_ids, labels.long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids[i], "labels": self.labels[i]}

    def subset(self, n: int) -> "TokenizedTextDataset":
        return TokenizedTextDataset(self.input_ids[:n], self.labels[:n])


class TextCollator:
    """Pad a list of items to the longest one, with the attention mask a BERT-style encoder expects."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        length = max(len(it["input_ids"]) for it in items)
        ids = torch.full((len(items), length), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(items), length), dtype=torch.long)
        for row, it in enumerate(items):
            ids[row, :len(it["input_ids"])] = it["input_ids"]
            mask[row, :len(it["input_ids"])] = 1
        labels = torch.stack([torch.as_tensor(it["labels"]) for it in items]).long()
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@dataclass
class TextClassificationData:
    """Tokenized train / validation (carved deterministically from train) / test splits and their tokenizer."""

    train: TokenizedTextDataset
    validation: TokenizedTextDataset
    test: TokenizedTextDataset | None
    num_classes: int
    tokenizer: "PreTrainedTokenizerBase"  # noqa: F821
    class_names: tuple[str, ...] | None = None  # id -> name, from a ClassLabel feature or sorted string labels

    def collator(self, augment: bool = False, generator: torch.Generator | None = None) -> TextCollator:
        """``augment`` / ``generator`` exist for interface parity with images: texts are not augmented."""
        return TextCollator(self.tokenizer.pad_token_id)

    def example_inputs(self, batch_size: int = 1, device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
        """A padded batch of validation texts (no labels), for tracing and MACs counting."""
        batch = self.collator()([self.validation[i] for i in range(batch_size)])
        return {k: v.to(device) for k, v in batch.items() if k != "labels"}


def train_wordpiece_tokenizer(texts, vocab_size: int = 4000) -> "PreTrainedTokenizerFast":  # noqa: F821
    """A lower-casing BERT-style WordPiece tokenizer built from ``texts`` — for when no pretrained tokenizer is
    reachable (offline, no Hub). Save it next to the model with ``save_pretrained``.

    The vocabulary is every character (word-initial and ``##`` continuation) plus the most frequent words, ties
    broken alphabetically: unlike the ``tokenizers`` trainer, whose ties depend on hash order, the same texts
    always give the same ids. Rare words fall back to characters, so nothing becomes ``[UNK]``.
    """
    from collections import Counter

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    normalizer, pre_tokenizer = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    words = Counter(w for text in texts for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted({c for w in words for c in w})
    vocab = special + chars + [f"##{c}" for c in chars]
    room = max(vocab_size - len(vocab), 0)
    vocab += [w for w, _ in sorted(words.items(), key=lambda wc: (-wc[1], wc[0])) if len(w) > 1][:room]
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer = normalizer, pre_tokenizer
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[(t, tok.token_to_id(t)) for t in ("[CLS]", "[SEP]")])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")


def _resolve_tokenizer(tokenizer, training_texts: list[str], vocab_size: int):
    """A tokenizer object as given, a local path or Hub id through ``AutoTokenizer``, or (None) a WordPiece vocabulary
    trained on ``training_texts`` only — never on validation or test texts."""
    if tokenizer is None:
        return train_wordpiece_tokenizer(training_texts, vocab_size)
    if isinstance(tokenizer, str):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(tokenizer)
    return tokenizer


def load_text_classification(
    source: str,
    tokenizer=None,
    val_size: int | float = 500,
    seed: int = 0,
    max_train_samples: int | None = None,
    max_test_samples: int | None = None,
    text_column: str | None = None,
    label_column: str | None = None,
    max_length: int = 64,
    vocab_size: int = 4000,
) -> TextClassificationData:
    """Load a text-classification dataset (e.g. TREC, SST-2) from a local folder / parquet file or a Hub id.

    ``tokenizer``: a tokenizer object, a local path or Hub id for ``AutoTokenizer``, or None to train a WordPiece
    vocabulary of ``vocab_size`` on the training split (offline). Texts are truncated to ``max_length`` tokens.
    Labels are checked (and string labels mapped to ids) as described in :func:`_labels`.
    """
    splits = _load_splits(source, val_size, max_train_samples, max_test_samples, ("text", TEXT_COLUMNS),
                          text_column, TEXT_LABEL_COLUMNS, label_column)
    texts = _texts(splits.train, splits.input_column)
    train_idx, val_idx = _carve_validation(len(texts), val_size, seed)
    tokenizer = _resolve_tokenizer(tokenizer, [texts[i] for i in train_idx.tolist()], vocab_size)

    def encode(texts: list[str], labels: torch.Tensor) -> TokenizedTextDataset:
        ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
        return TokenizedTextDataset([torch.tensor(i, dtype=torch.long) for i in ids], labels)

    encoded = encode(texts, splits.labels["train"])
    pick = lambda idx: TokenizedTextDataset([encoded.input_ids[i] for i in idx.tolist()],  # noqa: E731
                                            encoded.labels[idx])
    test = None
    if splits.test is not None:
        test = encode(_texts(splits.test, splits.input_column), splits.labels["test"])
    return TextClassificationData(pick(train_idx), pick(val_idx), test, splits.num_classes, tokenizer,
                                  splits.class_names)


ClassificationData = ImageClassificationData | TextClassificationData  # what finetuning and meta-training take


class TokenBlockDataset(torch.utils.data.Dataset):
    """A token stream cut into equal blocks (``[N, block_size]``); items are causal-LM examples (labels = inputs:
    🤗 causal LMs shift them themselves)."""

    def __init__(self, blocks: torch.Tensor):
        if blocks.dtype != torch.long or blocks.dim() != 2 or not len(blocks):
            raise ValueError("blocks must be a non-empty LongTensor [N, block_size]")
        self.blocks = blocks

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.blocks[i], "labels": self.blocks[i]}

    def subset(self, n: int) -> "TokenBlockDataset":
        return TokenBlockDataset(self.blocks[:n])

    @property
    def num_tokens(self) -> int:
        return self.blocks.numel()


def _stack_blocks(items: list[dict]) -> dict[str, torch.Tensor]:
    ids = torch.stack([it["input_ids"] for it in items])
    return {"input_ids": ids, "labels": ids.clone()}


@dataclass
class LanguageModelingData:
    """A text corpus for causal language models: train / validation (texts carved from train before tokenizing, so
    no block straddles the two) / test token blocks and their tokenizer."""

    train: TokenBlockDataset
    validation: TokenBlockDataset
    test: TokenBlockDataset | None
    tokenizer: "PreTrainedTokenizerBase"  # noqa: F821

    @property
    def block_size(self) -> int:
        return self.train.blocks.shape[1]

    def collator(self, augment: bool = False, generator: torch.Generator | None = None):
        """Stack blocks (all of one length: no padding). ``augment`` / ``generator``: interface parity."""
        return _stack_blocks

    def example_inputs(self, batch_size: int = 1, device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
        """Validation blocks (no labels), for tracing and MACs counting."""
        return {"input_ids": self.validation.blocks[:batch_size].to(device)}


def load_text_corpus(
    source: str,
    tokenizer=None,
    block_size: int = 64,
    val_size: int | float = 0.05,
    seed: int = 0,
    max_train_samples: int | None = None,
    max_test_samples: int | None = None,
    text_column: str | None = None,
    vocab_size: int = 4000,
) -> LanguageModelingData:
    """A language-modelling corpus from the texts of any dataset (a local folder / parquet file or a Hub id; labels,
    if any, are ignored): e.g. the sentences of ``../shared/data/sst2``.

    ``val_size`` texts (or a fraction) are carved from train by a seeded permutation before anything is tokenized;
    ``tokenizer`` as in :func:`load_text_classification` (None: a WordPiece vocabulary trained on the training texts
    only). Each text is tokenized with its special tokens (``[CLS] … [SEP]`` marks where one ends and the next
    begins), the texts of a split are concatenated in order and cut into blocks of ``block_size`` tokens (the
    remainder dropped).
    """
    if isinstance(block_size, bool) or not isinstance(block_size, numbers.Integral) or block_size < 2:
        raise ValueError(f"block_size must be an integer >= 2 (tokens per training example), got {block_size!r}")
    _check_arguments(val_size, max_train_samples, max_test_samples)
    raw, files = _load_with_train(source)
    column = text_column or _pick_column(raw["train"], TEXT_COLUMNS, "text", source)
    heads = {"train": max_train_samples, "test": max_test_samples}
    texts = {}
    for name in ("train", "test"):
        if name in raw:
            split = _Split(name, raw[name], files.get(name, [])).head(heads[name])
            if column not in split.data.column_names:
                raise ValueError(f"the {name} split of '{source}' has no text column '{column}' "
                                 f"(columns: {split.data.column_names})")
            texts[name] = _texts(split, column)
    train_idx, val_idx = _carve_validation(len(texts["train"]), val_size, seed)
    train_texts = [texts["train"][i] for i in sorted(train_idx.tolist())]
    val_texts = [texts["train"][i] for i in sorted(val_idx.tolist())]
    tokenizer = _resolve_tokenizer(tokenizer, train_texts, vocab_size)

    def blocks(split: str, rows: list[str]) -> TokenBlockDataset:
        stream = [t for ids in tokenizer(rows)["input_ids"] for t in ids]
        n = len(stream) // block_size
        if n == 0:
            raise ValueError(f"the {split} texts of '{source}' hold {len(stream)} tokens: fewer than one block of "
                             f"block_size={block_size}")
        return TokenBlockDataset(torch.tensor(stream[:n * block_size], dtype=torch.long).view(n, block_size))

    test = blocks("test", texts["test"]) if "test" in texts else None
    return LanguageModelingData(blocks("train", train_texts), blocks("validation", val_texts), test, tokenizer)
