"""Classification data through 🤗 ``datasets``: a Hub id or a local folder of parquet files, one code path.

Images are decoded once into a uint8 tensor (CIFAR-10 train: 150 MB, ~5 s) and augmented per batch in the
collator (random crop with zero padding, horizontal flip, normalisation). Decoding every image on every epoch
would cost more CPU than training a CIFAR ResNet-20 on two cores. Texts are tokenized once (with a given
tokenizer, or a WordPiece vocabulary trained on the training split when none is reachable offline) and padded
per batch. Both kinds expose the same interface (splits, ``collator``, ``example_inputs``, ``num_classes``), so
finetuning, meta-training and the pruning pipeline take either.
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

    @property
    def image_size(self) -> int:
        return self.train.images.shape[-1]

    def collator(self, augment: bool = False, generator: torch.Generator | None = None) -> "ImageCollator":
        return ImageCollator(self.mean, self.std, augment=augment, generator=generator)

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
    train_idx, val_idx = _carve_validation(len(labels), val_size, seed)
    test = None
    if "test" in raw:
        test_split = raw["test"]
        if max_test_samples is not None:
            test_split = test_split.select(range(min(max_test_samples, len(test_split))))
        test = TensorImageDataset(*_decode(test_split, image_column, label_column))
    num_classes = _num_classes(raw["train"], label_column, labels)
    return ImageClassificationData(
        TensorImageDataset(images[train_idx], labels[train_idx]),
        TensorImageDataset(images[val_idx], labels[val_idx]),
        test, num_classes, tuple(mean), tuple(std))


def _carve_validation(n: int, val_size: int | float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the training and validation examples: a seeded permutation of the training split."""
    n_val = int(round(val_size * n)) if isinstance(val_size, float) else int(val_size)
    if not 0 < n_val < n:
        raise ValueError(f"val_size={val_size} leaves no training or no validation examples ({n} training rows)")
    order = torch.from_numpy(np.random.default_rng(seed).permutation(n))
    return order[n_val:], order[:n_val]


def _num_classes(split: datasets.Dataset, label_column: str, labels: torch.Tensor) -> int:
    feature = split.features.get(label_column)
    return feature.num_classes if isinstance(feature, datasets.ClassLabel) else int(labels.max()) + 1


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
            "input and label columns via --dataset (e.g. --dataset ../shared/data/cifar10 or ../shared/data/trec), "
            "or a Hub id when online.") from e


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
    """
    raw = _load_raw(source)
    if "train" not in raw:
        raise ValueError(f"dataset '{source}' has no 'train' split (found {list(raw)})")
    text_column = text_column or _pick_column(raw["train"], TEXT_COLUMNS, "text", source)
    label_column = label_column or _pick_column(raw["train"], TEXT_LABEL_COLUMNS, "label", source)
    train = raw["train"]
    if max_train_samples is not None:
        train = train.select(range(min(max_train_samples, len(train))))
    train_idx, val_idx = _carve_validation(len(train), val_size, seed)
    if tokenizer is None:  # the vocabulary sees the training examples only, never validation or test
        tokenizer = train_wordpiece_tokenizer(list(train.select(train_idx.tolist())[text_column]), vocab_size)
    elif isinstance(tokenizer, str):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer)

    def encode(split: datasets.Dataset) -> TokenizedTextDataset:
        ids = tokenizer(list(split[text_column]), truncation=True, max_length=max_length)["input_ids"]
        return TokenizedTextDataset([torch.tensor(i, dtype=torch.long) for i in ids],
                                    torch.tensor(list(split[label_column]), dtype=torch.long))

    encoded = encode(train)
    pick = lambda idx: TokenizedTextDataset([encoded.input_ids[i] for i in idx.tolist()],  # noqa: E731
                                            encoded.labels[idx])
    test = None
    if "test" in raw:
        test_split = raw["test"]
        if max_test_samples is not None:
            test_split = test_split.select(range(min(max_test_samples, len(test_split))))
        test = encode(test_split)
    num_classes = _num_classes(raw["train"], label_column, encoded.labels)
    return TextClassificationData(pick(train_idx), pick(val_idx), test, num_classes, tokenizer)


ClassificationData = ImageClassificationData | TextClassificationData  # what finetuning and meta-training take
