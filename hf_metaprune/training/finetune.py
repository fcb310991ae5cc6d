"""Training and finetuning of classifiers (timm / CIFAR CNNs, 🤗 ViT / BERT) with a 🤗 Trainer: SGD + cosine by
default, optional knowledge distillation from an unpruned teacher and optional DepGraph sparse learning.

The Trainer brings Accelerate (multi-GPU, ``accelerate launch``), progress bars, logging and checkpointing; the
best epoch is chosen on the validation split carved from the training data, never on the test split.
"""
from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from ..data import ClassificationData, accuracy
from ..graph.tracing import classifier_logits, device_of
from ..pruning.batchnorm import recalibrate_batchnorm, recalibration_batches
from ..pruning.groups import ChannelGroups, sparsity_penalty


class ClassifierWithLoss(nn.Module):
    """Adapts a classifier to the Trainer's ``(**inputs, labels) -> {"loss", "logits"}`` interface."""

    def __init__(self, model: nn.Module, channels_last: bool = True):
        super().__init__()
        self.model = model
        self.channels_last = channels_last
        if channels_last:  # ~1.5x faster convolutions on CPU; weights are converted back after training
            model.to(memory_format=torch.channels_last)

    def forward(self, labels: torch.Tensor | None = None, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        x = inputs.get("pixel_values")
        if self.channels_last and x is not None and x.dim() == 4:
            inputs["pixel_values"] = x.contiguous(memory_format=torch.channels_last)
        logits = classifier_logits(self.model, inputs)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = F.cross_entropy(logits, labels)
        return out


def distillation_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton's term: KL(teacher ‖ student) between temperature-softened distributions, times ``temperature²``,
    averaged over the rows of ``[..., classes]`` logits (examples, or tokens of a language model)."""
    classes, t = logits.shape[-1], temperature
    return F.kl_div(F.log_softmax(logits.reshape(-1, classes) / t, -1),
                    F.log_softmax(teacher_logits.reshape(-1, classes) / t, -1),
                    reduction="batchmean", log_target=True) * t * t


class EvalCollatorMixin:
    """For a ``Trainer`` whose evaluation needs another collator (no augmentation): the Trainer has one for both,
    so ``eval_collator`` stands in while the evaluation loader is built."""

    eval_collator = None

    def get_eval_dataloader(self, eval_dataset=None):
        train_collator, self.data_collator = self.data_collator, self.eval_collator or self.data_collator
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            self.data_collator = train_collator


class NesterovSGDMixin:
    """For a ``Trainer``: ``optim="sgd"`` means SGD with Nesterov momentum 0.9 (the CIFAR standard), not the
    momentum-free SGD transformers builds, and no weight decay on biases and norms; every trainer whose budget is
    compared with another's uses it, so the optimizer is the same for all."""

    def create_optimizer(self, model=None):
        if self.optimizer is None and self.args.optim == "sgd":
            decay, no_decay = [], []
            for p in (model or self.model).parameters():
                if p.requires_grad:
                    (decay if p.dim() > 1 else no_decay).append(p)
            self.optimizer = torch.optim.SGD(
                [{"params": decay, "weight_decay": self.args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                lr=self.args.learning_rate, momentum=0.9, nesterov=True)
            return self.optimizer
        return super().create_optimizer(model) if model is not None else super().create_optimizer()


class ClassifierTrainer(EvalCollatorMixin, NesterovSGDMixin, Trainer):
    """A Trainer adding distillation (``teacher``) and group-norm sparse learning (``sparsity_groups``)."""

    def __init__(self, *args, teacher: nn.Module | None = None, distill_alpha: float = 0.5,
                 distill_temperature: float = 4.0, sparsity_groups: ChannelGroups | None = None,
                 sparsity_lambda: float = 0.0, sparsity_alpha: float = 16.0, eval_collator=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.eval_collator = eval_collator
        self.teacher = teacher.eval().to(self.args.device) if teacher is not None else None
        self.distill_alpha, self.distill_temperature = distill_alpha, distill_temperature
        self.sparsity_groups, self.sparsity_lambda, self.sparsity_alpha = sparsity_groups, sparsity_lambda, sparsity_alpha

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        loss = outputs["loss"]
        if self.teacher is not None and model.training:
            with torch.no_grad():
                teacher_logits = classifier_logits(self.teacher, inputs)
            kd = distillation_loss(outputs["logits"], teacher_logits, self.distill_temperature)
            loss = (1 - self.distill_alpha) * loss + self.distill_alpha * kd
        if self.sparsity_groups is not None and self.sparsity_lambda > 0 and model.training:
            params = {n.removeprefix("model."): p for n, p in self.accelerator.unwrap_model(model).named_parameters()}
            penalty, _ = sparsity_penalty(self.sparsity_groups, params, self.sparsity_alpha)
            loss = loss + self.sparsity_lambda * penalty
        return (loss, outputs) if return_outputs else loss

    def _save(self, output_dir=None, state_dict=None):
        """safetensors needs contiguous tensors; channels_last weights are not."""
        state_dict = state_dict if state_dict is not None else self.accelerator.unwrap_model(self.model).state_dict()
        super()._save(output_dir, {k: v.contiguous() for k, v in state_dict.items()})


@dataclass
class FinetuneResult:
    model: nn.Module
    val_accuracy: float
    log_history: list[dict[str, Any]] = field(default_factory=list)


def finetune(
    model: nn.Module,
    data: ClassificationData,
    output_dir: str,
    epochs: float = 1.0,
    batch_size: int = 128,
    learning_rate: float = 0.05,
    weight_decay: float = 5e-4,
    teacher: nn.Module | None = None,
    distill_alpha: float = 0.5,
    distill_temperature: float = 4.0,
    sparsity_lambda: float = 0.0,
    sparsity_alpha: float = 16.0,
    max_steps: int = -1,
    seed: int = 42,
    channels_last: bool = True,
    optimizers: tuple[torch.optim.Optimizer | None, Any] = (None, None),
    resume: bool = False,
    **training_args: Any,
) -> FinetuneResult:
    """Train ``model`` in place on ``data.train`` and return it with its best validation accuracy.

    ``teacher`` enables knowledge distillation; ``sparsity_lambda > 0`` adds DepGraph's group-norm penalty
    (sparse learning, so the model prunes better afterwards). Further keyword arguments go to
    ``TrainingArguments`` (e.g. ``report_to``, ``bf16``, ``optim="adamw_torch"``); ``optimizers`` takes your own
    optimizer and scheduler. With ``epochs == 0`` and ``max_steps <= 0`` only the validation accuracy is measured.
    ``resume=True`` saves full checkpoints (optimizer, scheduler, RNG) and continues from the newest one in
    ``output_dir``, so an interrupted long run loses at most one epoch.
    """
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    groups = ChannelGroups.from_model(model, data.example_inputs(device=device_of(model))) if sparsity_lambda > 0 \
        else None
    if epochs == 0 and max_steps <= 0:
        return FinetuneResult(model, evaluate_accuracy(model, data, batch_size=2 * batch_size))
    defaults = dict(
        output_dir=output_dir, num_train_epochs=epochs, max_steps=max_steps, per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=2 * batch_size, learning_rate=learning_rate, weight_decay=weight_decay,
        lr_scheduler_type="cosine", warmup_steps=0, optim="sgd", eval_strategy="epoch", save_strategy="epoch",
        save_total_limit=1, load_best_model_at_end=True, metric_for_best_model="accuracy", greater_is_better=True,
        logging_strategy="steps", logging_steps=50, seed=seed, data_seed=seed, report_to="none",
        remove_unused_columns=False, save_only_model=not resume)
    if max_steps > 0:
        defaults.update(eval_strategy="steps", save_strategy="steps", eval_steps=max_steps, save_steps=max_steps)
    defaults.update(training_args)
    args = TrainingArguments(**defaults)
    wrapped = ClassifierWithLoss(model, channels_last=channels_last)
    trainer = ClassifierTrainer(
        model=wrapped, args=args, train_dataset=data.train, eval_dataset=data.validation,
        data_collator=data.collator(augment=True), compute_metrics=accuracy, optimizers=optimizers,
        teacher=teacher, distill_alpha=distill_alpha, distill_temperature=distill_temperature,
        sparsity_groups=groups, sparsity_lambda=sparsity_lambda, sparsity_alpha=sparsity_alpha,
        eval_collator=data.collator(augment=False))
    last = get_last_checkpoint(output_dir) if resume and os.path.isdir(output_dir) else None
    if last is not None and not os.path.isfile(os.path.join(last, "optimizer.pt")):
        last = None  # a weights-only checkpoint cannot continue the schedule: start over
    finished = _finished_run(last)
    if finished is not None:  # resuming a finished run would train one more step (at lr 0, but BN statistics move)
        state = safetensors.torch.load_file(os.path.join(finished["checkpoint"], "model.safetensors"))
        wrapped.load_state_dict(state)
        model.to(memory_format=torch.contiguous_format).eval()
        score = finished["best_metric"]
        if score is None:
            score = evaluate_accuracy(model, data, batch_size=2 * batch_size)
        return FinetuneResult(model, float(score), finished["log_history"])
    trainer.train(resume_from_checkpoint=last)
    model = trainer.accelerator.unwrap_model(trainer.model).model
    model.to(memory_format=torch.contiguous_format).eval()
    score = trainer.state.best_metric
    if score is None or math.isnan(score):
        score = evaluate_accuracy(model, data, batch_size=2 * batch_size)
    return FinetuneResult(model, float(score), trainer.state.log_history)


def _finished_run(checkpoint: str | None) -> dict[str, Any] | None:
    """The best checkpoint, score and log of a run whose last checkpoint is its final step, else None."""
    path = os.path.join(checkpoint, "trainer_state.json") if checkpoint else ""
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        state = json.load(f)
    if not 0 < state.get("max_steps", 0) <= state.get("global_step", 0):
        return None
    best = state.get("best_model_checkpoint")
    best = best if best and os.path.isfile(os.path.join(best, "model.safetensors")) else checkpoint
    return {"checkpoint": best, "best_metric": state.get("best_metric"), "log_history": state.get("log_history", [])}


@torch.no_grad()
def predict(model: nn.Module, data: ClassificationData, split: str = "validation",
            batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted classes and labels of one split (model in eval mode); a plain loop, no Trainer needed."""
    dataset = getattr(data, split)
    collate = data.collator(augment=False)
    was_training = model.training
    model.eval()
    device, preds, labels = device_of(model), [], []
    for i in range(0, len(dataset), batch_size):
        batch = collate([dataset[j] for j in range(i, min(i + batch_size, len(dataset)))])
        logits = classifier_logits(model, {k: v.to(device) for k, v in batch.items()})
        preds.append(logits.argmax(-1).cpu())
        labels.append(batch["labels"])
    model.train(was_training)
    if not preds:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    return torch.cat(preds), torch.cat(labels)


def evaluate_accuracy(model: nn.Module, data: ClassificationData,
                      split: str = "validation", batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` (in eval mode) on one split."""
    preds, labels = predict(model, data, split, batch_size)
    return int((preds == labels).sum()) / max(len(labels), 1)


def evaluate_recalibrated(model: nn.Module, data: ClassificationData, splits: tuple[str, ...] = ("validation",),
                          seed: int = 0) -> dict[str, float]:
    """Accuracy per split of a copy of ``model`` whose BatchNorm statistics are re-estimated on 2000 training images
    (:func:`~hf_metaprune.pruning.recalibration_batches`): no gradient step, but the statistics stored for the
    unpruned network no longer hide what the kept channels can do. ``model`` itself is left as it is."""
    model = copy.deepcopy(model)
    recalibrate_batchnorm(model, recalibration_batches(data, seed=seed))
    return {split: evaluate_accuracy(model, data, split=split) for split in splits}
