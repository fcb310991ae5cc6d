"""Global structured pruning to a target MACs speed-up on Torch-Pruning's dependency graph.

Each step ranks every channel of every coupled group globally by the importance criterion (group-L2 by
default, the DepGraph criterion) and removes the least important ones. Step sizes adapt to the remaining gap
(estimated from per-layer MACs), so the loop ends in a few steps with the achieved speed-up in
``[target, target·(1 + tolerance)]``: near the end, channels whose removal would overshoot are skipped.
"""
from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch_pruning as tp
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from transformers import PreTrainedModel

from ..graph.attention import find_attention_modules, sync_head_counts
from ..graph.errors import UnsupportedModuleError
from ..graph.tracing import ROOT_MODULE_TYPES, build_dependency_graph, channel_dim_size
from .pretrained import attach_pruned_config

IMPORTANCES: dict[str, Callable[[], tp.importance.Importance]] = {
    "group_l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
    "group_l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
    "random": lambda: tp.importance.RandomImportance(),
}


@dataclass
class PruneResult:
    """A pruned network and what pruning it achieved (MACs counted for ``example_inputs``)."""

    model: nn.Module
    macs_before: float
    macs_after: float
    params_before: int
    params_after: int
    steps: int = 0
    widths: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def speed_up(self) -> float:
        return self.macs_before / self.macs_after

    def __repr__(self) -> str:
        return (f"PruneResult(speed_up={self.speed_up:.3f}, macs {self.macs_before / 1e6:.2f}M -> "
                f"{self.macs_after / 1e6:.2f}M, params {self.params_before / 1e6:.3f}M -> "
                f"{self.params_after / 1e6:.3f}M, steps={self.steps})")


def count_macs_and_params(model: nn.Module, example_inputs: Any) -> tuple[float, int]:
    """MACs of one forward on ``example_inputs`` (convolutions and matrix products) and parameter count."""
    macs, _ = _count_macs(model, example_inputs)
    return macs, sum(p.numel() for p in model.parameters())


def _count_macs(model: nn.Module, example_inputs: Any) -> tuple[float, dict[nn.Module, float]]:
    """Total and per-module MACs, counted by PyTorch's ``FlopCounterMode`` (no model copy, FLOPs / 2)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            _call(model, example_inputs)
    finally:
        model.train(was_training)
    by_name = {name.split(".", 1)[1]: sum(ops.values()) / 2 for name, ops in counter.get_flop_counts().items()
               if "." in name}
    per_module = {m: by_name.get(n, 0.0) for n, m in model.named_modules() if n}
    return counter.get_total_flops() / 2, per_module


@torch.inference_mode()
def measure_latency(models: dict[str, nn.Module], example_inputs: Any, runs: int = 20, warmup: int = 3,
                    channels_last: bool = False) -> dict[str, float]:
    """Median seconds per forward of each model on ``example_inputs``.

    Models are timed interleaved, one call each per round, so machine load drifts affect all of them alike;
    MACs ratios alone say nothing about real speed. ``channels_last`` times channels-last copies (the fast CPU
    layout; the models passed in keep their memory format). Models are put in eval mode.
    """
    if channels_last:
        models = {k: copy.deepcopy(m).to(memory_format=torch.channels_last) for k, m in models.items()}
        example_inputs = example_inputs.contiguous(memory_format=torch.channels_last)
    for m in models.values():
        m.eval()
        for _ in range(warmup):  # allocator, oneDNN kernel selection
            _call(m, example_inputs)
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(runs):
        for k, m in models.items():
            start = time.perf_counter()
            _call(m, example_inputs)
            times[k].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def _call(model: nn.Module, example_inputs: Any):
    if isinstance(example_inputs, dict):
        return model(**example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return model(*example_inputs)
    return model(example_inputs)


def _resolve_importance(importance) -> tp.importance.Importance:
    if importance is None:
        importance = "group_l2"
    if isinstance(importance, str):
        if importance not in IMPORTANCES:
            raise ValueError(f"unknown importance '{importance}'; choose one of {sorted(IMPORTANCES)} "
                             "or pass a torch_pruning.importance.Importance")
        return IMPORTANCES[importance]()
    return importance


@dataclass
class _Candidate:
    score: float
    group_index: int
    local_index: int
    cost: float
    unit: int = 1  # channels removed together: 1, or head_dim for an attention head


def prune_to_speedup(
    model: nn.Module,
    example_inputs: Any,
    speed_up: float,
    importance: str | tp.importance.Importance | None = "group_l2",
    ignored_layers: list[nn.Module] | None = None,
    tolerance: float = 0.01,
    max_pruning_ratio: float = 0.95,
    max_steps: int = 200,
    inplace: bool = False,
    prune_hidden: bool | None = None,
) -> PruneResult:
    """Structurally prune ``model`` until MACs(before) / MACs(after) reaches ``speed_up``.

    Args:
        importance: "group_l2" (default), "group_l1", "random", or any Torch-Pruning importance.
        ignored_layers: modules whose output channels are never pruned (output channels of the model — e.g.
            the classifier's classes — are never pruned in any case).
        tolerance: the achieved speed-up lands in ``[speed_up, speed_up·(1 + tolerance)]``.
        max_pruning_ratio: at most this fraction of a group's channels is removed.
        inplace: prune ``model`` itself instead of a copy (it is only changed once pruning has succeeded).
        prune_hidden: transformers only — also prune the residual-stream (hidden) width. Default: False for
            models with attention heads (heads and MLP neurons are pruned), True otherwise.

    Attention heads (found by :func:`find_attention_modules`) are pruned whole, ranked against MLP neurons and
    channels by the same normalised group criterion; a pruned 🤗 ``PreTrainedModel`` gets a config that rebuilds it
    (``save_pretrained`` / ``from_pretrained``).
    """
    if not speed_up > 1:
        raise ValueError(f"speed_up must be > 1 (MACs before / MACs after), got {speed_up}")
    if not 0 < max_pruning_ratio < 1:
        raise ValueError(f"max_pruning_ratio must be in (0, 1), got {max_pruning_ratio}")
    importance = _resolve_importance(importance)
    names = {m: n for n, m in model.named_modules()}
    ignored_names = [names[m] for m in ignored_layers or [] if m in names]
    if len(ignored_names) != len(ignored_layers or []):
        raise ValueError("ignored_layers must be submodules of model")
    original, model = model, copy.deepcopy(model)  # pruned on a copy: a failure leaves the input untouched
    attention = find_attention_modules(model)  # raises for attention that cannot be head-pruned
    head_dims = {p: a.head_dim for a in attention for p in a.projections}
    prune_hidden = not attention if prune_hidden is None else prune_hidden
    macs0, params0 = count_macs_and_params(model, example_inputs)
    target, floor = macs0 / speed_up, macs0 / (speed_up * (1 + tolerance))
    dg = build_dependency_graph(model, example_inputs)
    ignored = {model.get_submodule(n) for n in ignored_names}
    initial: dict[int, int] = {}
    steps = 0
    macs, layer_macs = _count_macs(model, example_inputs)
    while macs > target:
        if steps >= max_steps:
            raise RuntimeError(f"did not reach {speed_up}x in {max_steps} steps (at {macs0 / macs:.3f}x)")
        groups = _prunable_groups(dg, ignored, prune_hidden)
        candidates = []
        for gi, group in enumerate(groups):
            candidates += _group_candidates(dg, group, gi, importance, layer_macs, initial, max_pruning_ratio,
                                            head_dims)
        chosen = _choose(candidates, need=macs - target, room=macs - floor)
        if not chosen:
            reason = "no prunable channels are left" if not candidates else \
                "every remaining channel would overshoot the tolerance"
            raise ValueError(f"cannot reach a speed-up of {speed_up}x: stopped at {macs0 / macs:.3f}x because "
                             f"{reason} (max_pruning_ratio={max_pruning_ratio})")
        for gi, units in _by_group(chosen).items():
            group, n_ch = groups[gi], _channel_groups(groups[gi])
            size = len(group[0].idxs) // n_ch
            idxs = sorted(c + g * size for u, unit in units for c in range(u * unit, (u + 1) * unit)
                          for g in range(n_ch))
            dg.get_pruning_group(group[0].dep.target.module, group[0].dep.handler, idxs).prune()
        macs, layer_macs = _count_pruned_macs(model, attention, example_inputs)
        steps += 1
    if attention:
        sync_head_counts(attention)
    if isinstance(model, PreTrainedModel):  # a config that rebuilds the pruned widths: from_pretrained works
        attach_pruned_config(model)
    if inplace:  # swap the pruned modules in only now: a failure above leaves the caller's model untouched
        original.__dict__.update(model.__dict__)
        original.__class__ = model.__class__
        model = original
    params_after = sum(p.numel() for p in model.parameters())  # MACs were counted at the end of the last step
    return PruneResult(model, macs0, macs, params0, params_after, steps, module_widths(model))


def _prunable_groups(dg: tp.DependencyGraph, ignored: set[nn.Module], prune_hidden: bool = True) -> list:
    """Groups whose channels feed another layer: a model's outputs (e.g. class logits) are never pruned.

    Without ``prune_hidden`` (transformers) only heads and MLP neurons are pruned: a group touching a LayerNorm
    (the residual stream) or feeding the output layer (e.g. BERT's pooler) is left alone.
    """
    is_out = dg.is_out_channel_pruning_fn
    candidates, output_layers = [], set()
    for group in dg.get_all_groups(root_module_types=ROOT_MODULE_TYPES):
        consumers = [item.dep.target.module for item in group if not is_out(item.dep.handler)]
        if any(isinstance(m, ROOT_MODULE_TYPES) for m in consumers):
            candidates.append((group, consumers))
        else:
            output_layers.update(item.dep.target.module for item in group if is_out(item.dep.handler))
    groups = []
    for group, consumers in candidates:
        if any(item.dep.target.module in ignored and is_out(item.dep.handler) for item in group):
            continue
        if not prune_hidden and (any(isinstance(item.dep.target.module, nn.LayerNorm) for item in group)
                                 or any(m in output_layers for m in consumers)):
            continue
        groups.append(group)
    return groups


def _channel_groups(group) -> int:
    """Grouped (non-depthwise) convs force pruning the same local channel in every conv group."""
    n = 1
    for item in group:
        m = item.dep.target.module
        if isinstance(m, nn.modules.conv._ConvNd) and 1 < m.groups < m.out_channels:
            n = max(n, m.groups)
    return n


def _group_candidates(dg, group, gi, importance, layer_macs, initial, max_ratio, head_dims) -> list[_Candidate]:
    n_ch = _channel_groups(group)
    # an attention group (q/k/v outputs + output projection inputs) is pruned in whole heads
    unit = _head_size(dg, group, head_dims)
    size = len(group[0].idxs) // n_ch // unit
    root = group[0].dep.target.module
    initial.setdefault(id(root), size)
    # A grouped conv left with one channel per group would turn into a depthwise conv: keep two.
    keep_at_least = max(1 if n_ch == 1 or unit > 1 else 2, int(round(initial[id(root)] * (1 - max_ratio))))
    prunable = size - keep_at_least
    if prunable <= 0:
        return []
    imp = importance(group)
    if imp is None:
        return []
    imp = imp.detach().float().cpu().view(n_ch, size, unit).mean((0, 2))
    # MACs freed by removing one channel: each layer touching the group loses 1/width of its MACs.
    cost, seen = 0.0, set()
    for item in group:
        m = item.dep.target.module
        if not isinstance(m, nn.Module) or m in seen or m not in layer_macs:
            continue
        seen.add(m)
        dim = channel_dim_size(m, dg.is_out_channel_pruning_fn(item.dep.handler))
        if dim:
            cost += layer_macs[m] * (len(item.idxs) / dim) / size
    order = torch.argsort(imp)[:prunable]
    return [_Candidate(float(imp[i]), gi, int(i), cost, unit) for i in order]


def _head_size(dg: tp.DependencyGraph, group, head_dims: dict[nn.Module, int]) -> int:
    """``head_dim`` for a group of query/key/value output channels (pruned in whole heads), else 1."""
    return next((head_dims[it.dep.target.module] for it in group if it.dep.target.module in head_dims
                 and dg.is_out_channel_pruning_fn(it.dep.handler)), 1)


def _choose(candidates: list[_Candidate], need: float, room: float) -> list[_Candidate]:
    """Lowest-score channels first; take about half the remaining gap per step, never overshooting ``room``."""
    chosen, acc = [], 0.0
    for c in sorted(candidates, key=lambda c: (c.score, c.group_index, c.local_index)):
        if acc + c.cost > room:
            continue
        chosen.append(c)
        acc += c.cost
        if acc >= 0.5 * need:
            break
    return chosen


def _by_group(chosen: list[_Candidate]) -> dict[int, list[tuple[int, int]]]:
    out: dict[int, list[tuple[int, int]]] = {}
    for c in chosen:
        out.setdefault(c.group_index, []).append((c.local_index, c.unit))
    return out


def _count_pruned_macs(model: nn.Module, attention: list, example_inputs: Any) -> tuple[float, dict]:
    """:func:`_count_macs` after a pruning step; its forward also checks that the attention still runs."""
    if not attention:
        return _count_macs(model, example_inputs)
    sync_head_counts(attention)
    try:
        return _count_macs(model, example_inputs)
    except Exception as e:  # e.g. an attention implementation that reshapes with a fixed head count
        a = attention[0]
        raise UnsupportedModuleError(a.path, a.module, f"its forward fails with a pruned number of heads ({e})") from e


def module_widths(model: nn.Module) -> dict[str, dict[str, int]]:
    """Per-layer widths (in/out channels or features), the width specification of a pruned model."""
    widths = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            widths[name] = {"in": m.in_channels, "out": m.out_channels, "groups": m.groups}
        elif isinstance(m, nn.Linear):
            widths[name] = {"in": m.in_features, "out": m.out_features}
    return widths
