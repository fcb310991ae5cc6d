"""Causal language models (🤗 decoders): perplexity, and finetuning with the same Trainer as every other model —
optionally distilled, token by token, from the unpruned model — choosing the best epoch on the validation split."""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Trainer, TrainingArguments

from ..data import LanguageModelingData
from ..graph.tracing import device_of
from .finetune import FinetuneResult, distillation_loss


class CausalLMTrainer(Trainer):
    """A Trainer adding token-level distillation from ``teacher`` (KL between next-token distributions)."""

    def __init__(self, *args, teacher: nn.Module | None = None, distill_alpha: float = 0.5,
                 distill_temperature: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = False  # compute_loss returns a mean: let the Trainer scale accumulation
        self.teacher = teacher.eval().to(self.args.device) if teacher is not None else None
        self.distill_alpha, self.distill_temperature = distill_alpha, distill_temperature

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs, use_cache=False)
        loss = outputs.loss
        if self.teacher is not None and model.training:
            with torch.no_grad():
                teacher_logits = self.teacher(input_ids=inputs["input_ids"], use_cache=False).logits
            kd = distillation_loss(outputs.logits, teacher_logits, self.distill_temperature)
            loss = (1 - self.distill_alpha) * loss + self.distill_alpha * kd
        return (loss, outputs) if return_outputs else loss


@torch.no_grad()
def perplexity(model: nn.Module, data: LanguageModelingData, split: str = "validation", batch_size: int = 32) -> float:
    """``exp`` of the mean next-token cross-entropy over every block of ``split`` (each block predicted from its own
    start, as it was trained)."""
    dataset = getattr(data, split, None)
    if dataset is None:
        raise ValueError(f"split must be one of 'train', 'validation', 'test' (one the data holds), got {split!r}")
    was_training = model.training
    model.eval()
    device, total, count = device_of(model), 0.0, 0
    try:
        for start in range(0, len(dataset), batch_size):
            ids = dataset.blocks[start:start + batch_size].to(device)
            logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
            total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                           reduction="sum"))
            count += ids[:, 1:].numel()
    finally:
        model.train(was_training)
    return math.exp(total / count)


def finetune_causal_lm(
    model: nn.Module,
    data: LanguageModelingData,
    output_dir: str,
    epochs: float = 1.0,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    weight_decay: float = 0.01,
    teacher: nn.Module | None = None,
    distill_alpha: float = 0.5,
    distill_temperature: float = 1.0,
    max_steps: int = -1,
    seed: int = 42,
    **training_args: Any,
) -> FinetuneResult:
    """Train a causal LM in place on ``data.train`` (AdamW, warm-up + cosine) and return it with the best epoch's
    weights; ``FinetuneResult.val_accuracy`` holds the validation *perplexity* (lower is better).

    ``teacher`` (the unpruned model) adds distillation. Further keyword arguments go to ``TrainingArguments``.
    """
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    if epochs == 0 and max_steps <= 0:
        return FinetuneResult(model, perplexity(model, data, batch_size=batch_size))
    defaults = dict(
        output_dir=output_dir, num_train_epochs=epochs, max_steps=max_steps, per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=batch_size, learning_rate=learning_rate, weight_decay=weight_decay,
        lr_scheduler_type="cosine", warmup_steps=0.05, optim="adamw_torch", eval_strategy="epoch",
        save_strategy="epoch", save_total_limit=1, load_best_model_at_end=True, metric_for_best_model="loss",
        greater_is_better=False, logging_strategy="steps", logging_steps=50, seed=seed, data_seed=seed,
        report_to="none", remove_unused_columns=False, save_only_model=True)
    if max_steps > 0:
        defaults.update(eval_strategy="steps", save_strategy="steps", eval_steps=max_steps, save_steps=max_steps)
    defaults.update(training_args)
    trainer = CausalLMTrainer(model=model, args=TrainingArguments(**defaults), train_dataset=data.train,
                              eval_dataset=data.validation, data_collator=data.collator(), teacher=teacher,
                              distill_alpha=distill_alpha, distill_temperature=distill_temperature)
    trainer.train()
    model = trainer.accelerator.unwrap_model(trainer.model).eval()
    return FinetuneResult(model, perplexity(model, data, batch_size=batch_size), trainer.state.log_history)
