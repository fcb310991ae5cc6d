"""The published pipeline as one call: transform → finetune → prune → finetune.

Without a metanetwork the same call is the DepGraph baseline (plain or sparse-learning training in the pre-prune
stage), so every method gets the same budget: ``transform_epochs`` before pruning, ``finetune_epochs`` after.
"""
from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..data import ClassificationData
from ..graph.tracing import device_of
from ..methods.metapruner.modeling import MetaPrunerModel
from ..pruning import PruneResult, prune_to_speedup
from .finetune import evaluate_accuracy, finetune


@dataclass
class PipelineResult:
    model: nn.Module
    prune: PruneResult
    val_accuracy: float
    stage_seconds: dict[str, float] = field(default_factory=dict)
    stage_val_accuracy: dict[str, float] = field(default_factory=dict)


@dataclass
class PrePruneResult:
    """The network after the pre-prune stage, ready to be pruned (to one or several speed-ups)."""
    model: nn.Module
    stage_seconds: dict[str, float] = field(default_factory=dict)
    stage_val_accuracy: dict[str, float] = field(default_factory=dict)


def pre_prune(
    model: nn.Module,
    data: ClassificationData,
    output_dir: str,
    metapruner: MetaPrunerModel | None = None,
    epochs: float = 0.0,
    sparsity_lambda: float = 0.0,
    **finetune_kwargs: Any,
) -> PrePruneResult:
    """Stages 1–2 of the pipeline on a copy of ``model``: transform with ``metapruner`` (if given), then train
    ``epochs`` (DepGraph sparse learning when ``sparsity_lambda > 0``, plain training otherwise).

    Separate from pruning because the stage does not depend on the target speed-up: a benchmark runs it once and
    prunes the result to every speed-up.
    """
    times, accs = {}, {}
    start = time.time()
    if metapruner is not None:
        current = metapruner.transform(model, data.example_inputs(device=device_of(model)))
        times["transform"] = time.time() - start
        accs["transformed"] = evaluate_accuracy(current, data)
    else:
        current = copy.deepcopy(model)
    if epochs > 0:
        start = time.time()
        trained = finetune(current, data, os.path.join(output_dir, "pre_prune"), epochs=epochs,
                           sparsity_lambda=sparsity_lambda, **finetune_kwargs)
        times["pre_prune_training"] = time.time() - start
        current, accs["pre_prune"] = trained.model, trained.val_accuracy
    return PrePruneResult(current, times, accs)


def prune_and_finetune(
    model: nn.Module,
    data: ClassificationData,
    speed_up: float,
    output_dir: str,
    metapruner: MetaPrunerModel | None = None,
    transform_epochs: float = 0.0,
    finetune_epochs: float = 1.0,
    importance: str = "group_l2",
    sparsity_lambda: float = 0.0,
    distill: bool = False,
    prune_kwargs: dict[str, Any] | None = None,
    **finetune_kwargs: Any,
) -> PipelineResult:
    """Prune ``model`` (left untouched) to ``speed_up`` and finetune it; return the pruned model and timings.

    Stages: (1) transform with ``metapruner`` if given; (2) train ``transform_epochs`` (with DepGraph sparse
    learning when ``sparsity_lambda > 0``); (3) prune to ``speed_up`` with ``importance``; (4) finetune
    ``finetune_epochs``, distilling from the unpruned model when ``distill``. Keyword arguments go to
    :func:`finetune` for both training stages.
    """
    pre = pre_prune(model, data, output_dir, metapruner, transform_epochs, sparsity_lambda, **finetune_kwargs)
    times, accs = pre.stage_seconds, pre.stage_val_accuracy
    teacher = _frozen_copy(model) if distill else None
    start = time.time()
    x = data.example_inputs(device=device_of(model))
    result = prune_to_speedup(pre.model, x, speed_up, importance=importance, inplace=True, **(prune_kwargs or {}))
    times["prune"] = time.time() - start
    accs["pruned"] = evaluate_accuracy(result.model, data)
    start = time.time()
    tuned = finetune(result.model, data, os.path.join(output_dir, "post_prune"), epochs=finetune_epochs,
                     teacher=teacher, **finetune_kwargs)
    times["finetune"] = time.time() - start
    accs["finetuned"] = tuned.val_accuracy
    result.model = tuned.model
    return PipelineResult(tuned.model, result, tuned.val_accuracy, times, accs)


def _frozen_copy(model: nn.Module) -> nn.Module:
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher
