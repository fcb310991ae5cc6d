"""Meta-training STAMP over tasks sampled from a reference dataset: every step is one episode (a random subset of
its classes; a support sample the encoder reads and a fresh head is fitted on; a disjoint query sample the loss is
measured on; a target speed-up drawn from ``config.speed_ups``). A transformers ``Trainer``, so Accelerate
(``accelerate launch``) works as usual; only the encoder and generators train — the backbone stays frozen."""
from __future__ import annotations

import math
import random
from typing import Any

import torch
from transformers import Trainer, TrainingArguments

from ...data import ImageClassificationData
from ...training.finetune import EvalCollatorMixin
from .modeling import STAMPModel


class TaskEpisodes(torch.utils.data.Dataset):
    """Episode ``i`` of a reference dataset, drawn from ``seed`` and ``i`` alone (so every process and every resume
    sees the same episodes): 2–5 classes (``ways``), ``support_size`` support and ``query_size`` query images,
    class-balanced and disjoint, and a log-uniform target speed-up in ``speed_ups``."""

    def __init__(self, data: ImageClassificationData, num_episodes: int, support_size: int = 200,
                 query_size: int = 100, ways: tuple[int, int] = (2, 5), speed_ups: tuple[float, float] = (1.5, 4.0),
                 seed: int = 0, split: str = "train"):
        if not isinstance(data, ImageClassificationData):
            raise TypeError(f"TaskEpisodes: data must be an ImageClassificationData, got {type(data).__name__}")
        source = getattr(data, split, None)
        if source is None or len(source) == 0:
            raise ValueError(f"TaskEpisodes: the {split!r} split of data holds no images")
        self.by_class: dict[int, list[int]] = {}
        for i, c in enumerate(source.labels.tolist()):
            self.by_class.setdefault(c, []).append(i)
        low, high = ways
        if not 2 <= low <= high or high > len(self.by_class):
            raise ValueError("TaskEpisodes: ways must be (low, high) with 2 <= low <= high <= the "
                             f"{len(self.by_class)} classes of the {split!r} split, got {ways!r}")
        if num_episodes < 1 or support_size < high or query_size < high:
            raise ValueError(f"TaskEpisodes: num_episodes ({num_episodes}) must be >= 1 and support_size "
                             f"({support_size}) / query_size ({query_size}) at least one image per class ({high})")
        self.data, self.source, self.num_episodes, self.seed = data, source, num_episodes, seed
        self.support_size, self.query_size, self.ways, self.speed_ups = support_size, query_size, ways, speed_ups

    def __len__(self) -> int:
        return self.num_episodes

    def __getitem__(self, i: int) -> dict[str, Any]:
        rng = random.Random(self.seed * 1_000_003 + i)
        classes = rng.sample(sorted(self.by_class), rng.randint(*self.ways))
        support, query = [], []
        for label, c in enumerate(classes):
            n_s, n_q = self.support_size // len(classes), self.query_size // len(classes)
            members = rng.sample(self.by_class[c], min(n_s + n_q, len(self.by_class[c])))
            support += [(j, label) for j in members[:n_s]]
            query += [(j, label) for j in members[n_s:]]
        low, high = self.speed_ups
        speed_up = math.exp(rng.uniform(math.log(low), math.log(high)))
        return {"support": support, "query": query, "speed_up": speed_up}


class EpisodeCollator:
    """One episode (a batch of one) → normalised, augmented support and query tensors and the target speed-up."""

    def __init__(self, episodes: TaskEpisodes, augment: bool = True):
        self.episodes, self.collate = episodes, episodes.data.collator(augment=augment)

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        if len(items) != 1:
            raise ValueError("STAMPTrainer: one episode per step; set per_device_train_batch_size=1")
        episode, images = items[0], self.episodes.source.images
        batch = {}
        for part in ("support", "query"):
            rows = [{"pixel_values": images[j], "labels": torch.tensor(label)} for j, label in episode[part]]
            collated = self.collate(rows)
            batch[f"{part}_pixel_values"], batch[f"{part}_labels"] = collated["pixel_values"], collated["labels"]
        batch["speed_up"] = torch.tensor(episode["speed_up"], dtype=torch.float32)
        return batch


class STAMPTrainer(EvalCollatorMixin, Trainer):
    """Meta-trains a :class:`STAMPModel` on episodes of ``data`` (the reference dataset): ``args.max_steps``
    episodes (or ``num_train_epochs`` × ``num_episodes``), validated on episodes of the validation split."""

    def __init__(self, model: STAMPModel, args: TrainingArguments, data: ImageClassificationData,
                 num_episodes: int = 500, support_size: int | None = None, query_size: int = 100,
                 ways: tuple[int, int] = (2, 5), **kwargs: Any):
        if not isinstance(model, STAMPModel):
            raise TypeError(f"STAMPTrainer: model must be a STAMPModel, got {type(model).__name__}")
        support_size = support_size or model.config.set_size
        train = TaskEpisodes(data, num_episodes, support_size, query_size, ways, tuple(model.config.speed_ups),
                             args.seed)
        validation = TaskEpisodes(data, max(8, num_episodes // 20), support_size, query_size,
                                  (ways[0], min(ways[1], data.num_classes)), tuple(model.config.speed_ups),
                                  args.seed + 1, split="validation") if len(data.validation) else None
        args.remove_unused_columns = False
        args.prediction_loss_only = True  # episodes differ in their number of classes: only losses gather
        args.per_device_train_batch_size = args.per_device_eval_batch_size = 1
        super().__init__(model=model, args=args, train_dataset=train, eval_dataset=validation,
                         data_collator=EpisodeCollator(train), **kwargs)
        self.eval_collator = EpisodeCollator(validation, augment=False) if validation is not None else None
