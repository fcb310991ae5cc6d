"""Global structured pruning to a target MACs speed-up on Torch-Pruning's dependency graph.

Each step ranks every channel of every coupled group globally by the importance criterion (group-L2 by
default, the DepGraph criterion) and removes the least important ones. Step sizes adapt to the remaining gap
(estimated from per-layer MACs), so the loop ends in a few steps with the achieved speed-up in
``[target, target·(1 + tolerance)]``: near the end, channels whose removal would overshoot are skipped.
"""
from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch_pruning as tp
from torch import nn
from transformers import PreTrainedModel

from ..graph.attention import HeadLayout, find_attention_modules, head_layouts, sync_head_counts
from ..graph.errors import UnsupportedModuleError
from ..graph.tracing import (build_dependency_graph, call_model, channel_dim_size,
                             check_supported_modules)
from .cost import count_macs, count_macs_and_params
from .groups import (ChannelGroups, check_round_to, coupled_groups, group_layout, head_size, num_channel_groups,
                     prunable_groups, removal_chunks, tied_modules, unit_channel_indices)
from .latency import LatencyTable, batch_size_of, is_tabled
from .pretrained import attach_pruned_config

logger = logging.getLogger(__name__)

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
    note: str = ""  # set when the result lands outside the requested tolerance, saying why
    latency_before: float | None = None  # seconds estimated by the LatencyTable pruning ran against, if any
    latency_after: float | None = None

    @property
    def speed_up(self) -> float:
        """MACs before / after."""
        return self.macs_before / self.macs_after

    @property
    def latency_speed_up(self) -> float | None:
        """Estimated latency before / after (pruning against a :class:`~hf_metaprune.LatencyTable`), else None."""
        return None if self.latency_after is None else self.latency_before / self.latency_after

    def __repr__(self) -> str:
        note = f", note={self.note!r}" if self.note else ""
        if self.latency_after is not None:
            note = f", latency_speed_up={self.latency_speed_up:.3f} (estimated)" + note
        return (f"PruneResult(speed_up={self.speed_up:.3f}, macs {self.macs_before / 1e6:.2f}M -> "
                f"{self.macs_after / 1e6:.2f}M, params {self.params_before / 1e6:.3f}M -> "
                f"{self.params_after / 1e6:.3f}M, steps={self.steps}{note})")


def _resolve_importance(importance) -> tp.importance.Importance:
    if importance is None:
        importance = "group_l2"
    if isinstance(importance, str):
        if importance not in IMPORTANCES:
            raise ValueError(f"unknown importance '{importance}'; choose one of {sorted(IMPORTANCES)} "
                             "or pass a torch_pruning.importance.Importance")
        return IMPORTANCES[importance]()
    if not isinstance(importance, tp.importance.Importance):
        raise TypeError(f"importance must be one of {sorted(IMPORTANCES)} or a torch_pruning.importance.Importance, "
                        f"got {importance!r} ({type(importance).__name__})")
    return importance


def check_number(name: str, value: Any, low: float, high: float = math.inf, low_inclusive: bool = True) -> float:
    """``value`` as a float in the range, or an error naming the argument."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if math.isnan(value) or value > high or value < low or (value == low and not low_inclusive):
        interval = f"{'[' if low_inclusive else '('}{low}, {high}]"
        raise ValueError(f"{name} must be in {interval}, got {value}")
    return value


def _expand_ignored(model: nn.Module, ignored_layers) -> set[str]:
    """Names of the ignored modules and of everything inside them (a container ignores its layers), as
    Torch-Pruning does; a single module is accepted as well as a list."""
    if ignored_layers is None:
        return set()
    if isinstance(ignored_layers, nn.Module):
        ignored_layers = [ignored_layers]
    names = {m: n for n, m in model.named_modules()}
    out = set()
    for layer in ignored_layers:
        if not isinstance(layer, nn.Module) or layer not in names:
            raise ValueError(f"ignored_layers must hold submodules of the model, got {type(layer).__name__}")
        out.update(names[m] for m in layer.modules() if m in names)
    return out


@dataclass
class _Candidate:
    score: float
    group_index: int
    local_indices: tuple[int, ...]  # units removed together: one, or a chunk keeping the width a multiple of round_to
    cost: float
    unit: int = 1  # channels per unit: 1, or head_dim for an attention head


def prune_to_speedup(
    model: nn.Module,
    example_inputs: Any,
    speed_up: float,
    importance: str | tp.importance.Importance | None = "group_l2",
    ignored_layers: list[nn.Module] | nn.Module | None = None,
    tolerance: float = 0.01,
    max_pruning_ratio: float = 0.95,
    max_steps: int = 200,
    inplace: bool = False,
    prune_hidden: bool | None = None,
    round_to: int | None = None,
    head_granularity: str = "kv_group",
    latency_table: LatencyTable | None = None,
) -> PruneResult:
    """Structurally prune ``model`` until MACs(before) / MACs(after) reaches ``speed_up`` — or, with a
    ``latency_table``, until its estimated latency does.

    Args:
        importance: "group_l2" (default), "group_l1", "random", or any Torch-Pruning importance.
        ignored_layers: modules (or one module; a container stands for every layer in it) whose output channels
            are never pruned (output channels of the model — e.g. the classifier's classes — never are anyway).
        tolerance: the achieved speed-up lands in ``[speed_up, speed_up·(1 + tolerance)]``; when only units too
            coarse for that are left (whole heads), the one landing closest above is removed and
            ``PruneResult.note`` says so. An unreachable target raises ``ValueError`` naming what blocks it.
        max_pruning_ratio: at most this fraction of a group's channels is removed.
        inplace: prune ``model`` itself instead of a copy (it is only changed once pruning has succeeded).
        prune_hidden: transformers only — also prune the residual-stream (hidden) width. Default: False for
            models with attention heads (heads and MLP neurons are pruned), True otherwise.
        round_to: keep every pruned group's channel count a multiple of this (e.g. 8): fewer MACs only turn into
            less latency when widths fit the kernels' tiles. Groups narrower than ``round_to`` are left whole,
            heads stay whole heads; units then go in chunks, so the speed-up can land above the tolerance
            (``PruneResult.note`` says so).
        head_granularity: decoders with grouped-query attention — ``"kv_group"`` removes whole key/value groups
            (a key and a value head with the query heads reading them), ``"query"`` removes the same number of query
            heads from every group and keeps the key/value heads.
        latency_table: a :class:`~hf_metaprune.LatencyTable` measured on ``model`` (same module names): the cost
            pruning meets is then the table's estimated latency — ``speed_up`` is a latency ratio
            (``PruneResult.latency_speed_up``; ``PruneResult.speed_up`` still reports MACs) and each step's size is
            the latency its units free; the units are still ranked by ``importance``.

    Attention heads (found by :func:`find_attention_modules`) are pruned whole, ranked against MLP neurons and
    channels by the same normalised group criterion; a pruned 🤗 ``PreTrainedModel`` gets a config that rebuilds it
    (``save_pretrained`` / ``from_pretrained``).
    """
    speed_up = check_number("speed_up", speed_up, 1.0, low_inclusive=False)
    tolerance = check_number("tolerance", tolerance, 0.0)
    max_pruning_ratio = check_number("max_pruning_ratio", max_pruning_ratio, 0.0, 1.0, low_inclusive=False)
    if max_pruning_ratio == 1.0:
        raise ValueError("max_pruning_ratio must be below 1: a layer always keeps at least one channel")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps must be a positive integer, got {max_steps!r}")
    round_to = check_round_to(round_to)
    if latency_table is not None and not isinstance(latency_table, LatencyTable):
        raise TypeError(f"latency_table must be a LatencyTable (LatencyTable.measure(model, inputs)), got "
                        f"{type(latency_table).__name__}")
    importance = _resolve_importance(importance)
    ignored_names = _expand_ignored(model, ignored_layers)
    check_supported_modules(model)  # before the copy: old-style weight norm cannot even be deep-copied
    pruned, macs0, macs, params0, steps, note, latency = _prune_copy(
        model, example_inputs, ignored_names, speed_up=speed_up, importance=importance, tolerance=tolerance,
        max_pruning_ratio=max_pruning_ratio, max_steps=max_steps, prune_hidden=prune_hidden, round_to=round_to,
        head_granularity=head_granularity, latency_table=latency_table)
    if inplace:  # swap the pruned modules in only now: a failure above leaves the caller's model untouched
        model.__dict__.update(pruned.__dict__)
        model.__class__ = pruned.__class__
        pruned = model
    params_after = sum(p.numel() for p in pruned.parameters())  # MACs were counted at the end of the last step
    return PruneResult(pruned, macs0, macs, params0, params_after, steps, module_widths(pruned), note, *latency)


def _prune_copy(model: nn.Module, example_inputs: Any, ignored_names: set[str], speed_up: float, importance,
                tolerance: float, max_pruning_ratio: float, max_steps: int, prune_hidden: bool | None,
                round_to: int = 1, head_granularity: str = "kv_group", latency_table: LatencyTable | None = None
                ) -> tuple[nn.Module, float, float, int, int, str, tuple[float | None, float | None]]:
    """The pruning loop, on a copy of ``model``: a failure leaves the input untouched. It removes units until the
    cost — MACs, or the latency table's estimate — reaches the target."""
    model = copy.deepcopy(model)  # pruned on a copy: a failure leaves the input untouched
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    attention = find_attention_modules(model)  # raises for attention that cannot be head-pruned
    layouts = head_layouts(attention, head_granularity)
    prune_hidden = not attention if prune_hidden is None else prune_hidden
    dg = build_dependency_graph(model, example_inputs)  # checks the example inputs first
    macs, layer_macs = count_macs(model, example_inputs)  # one counting forward serves the start and step 1
    macs0, params0 = macs, sum(p.numel() for p in model.parameters())
    if latency_table is not None:
        batch = batch_size_of(model, example_inputs)
        missing = [n for n, m in model.named_modules() if m in layer_macs and layer_macs[m] > 0 and
                   is_tabled(m) and n not in latency_table.layers]
        if missing:
            raise ValueError(f"latency_table has no entry for {missing[:3]} ({len(missing)} layers): it was measured "
                             "on another model; measure it on this one (LatencyTable.measure(model, inputs))")

    def cost_of(macs: float, layer_macs: dict) -> tuple[float, dict]:
        return (macs, layer_macs) if latency_table is None else latency_table.costs(model, layer_macs, batch)

    cost, layer_cost = cost_of(macs, layer_macs)
    cost0 = cost
    target, floor = cost0 / speed_up, cost0 / (speed_up * (1 + tolerance))
    ignored = {model.get_submodule(n) for n in ignored_names}
    untouchable = tied_modules(model)
    initial: dict[int, int] = {}
    steps, note = 0, ""
    while cost > target:
        if steps >= max_steps:
            raise RuntimeError(f"did not reach {speed_up}x in {max_steps} steps (at {cost0 / cost:.3f}x)")
        groups, excluded = prunable_groups(dg, ignored, prune_hidden, untouchable)
        head_costs = _attention_macs_per_head(attention, layer_cost, layouts)
        candidates = []
        for gi, group in enumerate(groups):
            candidates += _group_candidates(dg, group, gi, importance, layer_cost, initial, max_pruning_ratio,
                                            layouts, head_costs, round_to)
        if not candidates:
            raise ValueError(_unreachable_message(speed_up, cost0 / cost, max_pruning_ratio, excluded, attention,
                                                  "estimated latency" if latency_table else "MACs"))
        chosen = _choose(candidates, need=cost - target, room=cost - floor)
        if not chosen:  # every unit left overshoots the tolerance: take the one landing closest above the target
            chosen = [min(candidates, key=lambda c: (c.cost, c.score))]
            n = len(chosen[0].local_indices)
            what = "head" if chosen[0].unit > 1 else "channel" if n == 1 else f"chunk of {n} channels"
            note = (f"no unit left would land within tolerance={tolerance}; removed the one landing closest above "
                    f"the {speed_up}x target (a {what})")
        for gi, units in _by_group(chosen).items():
            _prune_units(dg, groups[gi], units, layouts)
        macs, layer_macs = _count_pruned_macs(model, attention, example_inputs)
        cost, layer_cost = cost_of(macs, layer_macs)
        steps += 1
    if note:
        note += f"; reached {cost0 / cost:.3f}x"
        logger.warning("prune_to_speedup: %s", note)
    _finish(model, frozen, attention)
    return model, macs0, macs, params0, steps, note, (None, None) if latency_table is None else (cost0, cost)


def _prune_units(dg: tp.DependencyGraph, group, units: list[int], layouts: dict) -> None:
    idxs = unit_channel_indices(dg, group, units, layouts)
    pruning_group = dg.get_pruning_group(group[0].dep.target.module, group[0].dep.handler, idxs)
    layout = group_layout(dg, group, layouts)
    # a decoder's keys and values, outside the trace: their input columns follow the query projection's, their
    # rows the removed key/value groups
    followers = [(linear, 1, item.idxs) for item in pruning_group if item.dep.target.module in layouts
                 and not dg.is_out_channel_pruning_fn(item.dep.handler)
                 for _, linear in layouts[item.dep.target.module].followers]
    if layout is not None and layout.follower_rows:
        rows = [u * layout.follower_rows + i for u in units for i in range(layout.follower_rows)]
        followers += [(linear, 0, rows) for _, linear in layout.followers]
    try:
        pruning_group.prune()
    except (IndexError, RuntimeError) as e:
        raise _untraceable(dg, group, e) from e
    for linear, dim, idxs in followers:  # output rows (with the bias) or input columns
        for name, p in list(linear.named_parameters(recurse=False)):
            if dim == 0 or p.dim() > 1:
                _drop_entries(linear, name, dim, idxs)
        linear.out_features, linear.in_features = linear.weight.shape
    for _, module, attr in layout.per_head if layout else ():  # per-head tables lose the removed heads' entries too
        _drop_entries(module, attr, getattr(module, attr).dim() - 1, units)


def _drop_entries(module: nn.Module, name: str, dim: int, idxs: list[int]) -> None:
    """Replace parameter ``name`` of ``module`` by a copy without entries ``idxs`` along ``dim`` (keeping
    ``requires_grad``): for the tensors Torch-Pruning does not trace."""
    p = getattr(module, name)
    keep = torch.tensor(sorted(set(range(p.shape[dim])) - set(idxs)), device=p.device, dtype=torch.long)
    setattr(module, name, nn.Parameter(p.data.index_select(dim, keep).clone(), requires_grad=p.requires_grad))


def _finish(model: nn.Module, frozen: set[str], attention: list) -> None:
    """What every pruned model needs to run, train and reload like the original."""
    _check_no_empty_layers(model)
    for n, p in model.named_parameters():  # Torch-Pruning creates new (trainable) Parameters for pruned tensors
        p.requires_grad_(n not in frozen)
    if attention:
        sync_head_counts(attention)
    if isinstance(model, PreTrainedModel):  # a config that rebuilds the pruned widths: from_pretrained works
        attach_pruned_config(model)


def prune_to_widths(model: nn.Module, example_inputs: Any, widths, keep: str = "first",
                    inplace: bool = False, head_granularity: str = "kv_group") -> PruneResult:
    """Prune every coupled group of ``model`` to an explicit width (a searched structure).

    ``widths`` holds one unit count per group, in :class:`~hf_metaprune.ChannelGroups` order (its
    ``group_sizes`` are the full widths; ``widths_for_ratios`` turns ratios into widths), or a dict
    ``{group index: width}`` for the groups to shrink. ``keep="first"`` keeps each group's leading units
    (MetaPruning's crop, so generated weights line up), ``keep="group_l2"`` its strongest. The result saves and
    reloads exactly like :func:`prune_to_speedup`'s.
    """
    if keep not in ("first", "group_l2"):
        raise ValueError(f"keep must be 'first' or 'group_l2', got {keep!r}")
    return prune_units(model, example_inputs, lambda groups, params: groups.removed_for_widths(
        widths, params if keep == "group_l2" else None), inplace, head_granularity)


def prune_units(model: nn.Module, example_inputs: Any, removed, inplace: bool = False,
                head_granularity: str = "kv_group") -> PruneResult:
    """Prune exactly the pruning units ``removed`` names: a boolean tensor with one entry per unit of
    :class:`~hf_metaprune.ChannelGroups` ``.from_model(model, example_inputs)`` (a mask a method generated), or a
    callable ``(groups, params) -> that tensor``. Every group keeps at least one unit. The result saves and reloads
    exactly like :func:`prune_to_speedup`'s."""
    check_supported_modules(model)
    pruned = copy.deepcopy(model)
    frozen = {n for n, p in pruned.named_parameters() if not p.requires_grad}
    attention = find_attention_modules(pruned)
    dg, tp_groups, layouts = coupled_groups(pruned, example_inputs, head_granularity)
    groups = ChannelGroups.from_coupled_groups(pruned, example_inputs, dg, tp_groups, layouts, head_granularity)
    if callable(removed):
        removed = removed(groups, dict(pruned.named_parameters()))
    if not isinstance(removed, torch.Tensor) or removed.dtype != torch.bool or removed.shape != (groups.num_units,):
        raise ValueError(f"prune_units: removed must be a bool tensor of shape ({groups.num_units},) (one entry per "
                         f"pruning unit of the model's ChannelGroups), got {removed!r}")
    removed = removed.cpu()
    emptied = [g for g in range(groups.num_groups) if bool(removed[groups.group_of_unit == g].all())]
    if emptied:
        raise ValueError(f"prune_units: removed empties the coupled groups {emptied}; every group keeps at least one "
                         "unit")
    macs0, params0 = count_macs_and_params(pruned, example_inputs)
    start = 0
    for group, size in zip(tp_groups, groups.group_sizes):
        units = torch.nonzero(removed[start:start + size]).flatten().tolist()
        if units:
            _prune_units(dg, group, units, layouts)
        start += size
    _finish(pruned, frozen, attention)
    macs, params = count_macs_and_params(pruned, example_inputs)
    if inplace:
        model.__dict__.update(pruned.__dict__)
        model.__class__ = pruned.__class__
        pruned = model
    return PruneResult(pruned, macs0, macs, params0, params, 1, module_widths(pruned))


def _attention_macs_per_head(attention: list, layer_macs: dict[nn.Module, float],
                             layouts: dict[nn.Module, HeadLayout]) -> dict[nn.Module, float]:
    """Per traced projection, the MACs one pruning unit (a head, a decoder's key/value group or query head in every
    group) frees outside the traced layers: its share of q·kᵀ and attention·v, and of the key/value projections
    that follow a decoder's queries.

    Removing a head removes its share of those too; counting only the projections makes heads look cheaper
    than they are and the last pruning step overshoot.
    """
    out = {}
    for a in attention:
        own = layer_macs.get(a.module, 0.0) - sum(layer_macs.get(c, 0.0) for c in a.module.children())
        per_head = max(own, 0.0) / max(a.num_heads, 1)
        for p in a.traced_projections:
            layout = layouts[p]
            heads = layout.head_dim // a.head_dim * (layout.parts if a.causal else 1)
            follow = sum(layer_macs.get(f, 0.0) * layout.follower_rows / f.out_features for _, f in layout.followers)
            out[p] = per_head * heads + follow
    return out


def _unreachable_message(speed_up: float, reached: float, max_ratio: float, excluded: dict[str, int],
                         attention: list, cost: str = "MACs") -> str:
    """Why no unit is left to prune, and which setting would allow more."""
    limits = [f"every prunable group is down to its floor (max_pruning_ratio={max_ratio} keeps "
              f"{1 - max_ratio:.0%} of each group's channels, heads and neurons, and at least one)"]
    hints = ["raise max_pruning_ratio"] if max_ratio < 0.99 else []
    if excluded.get("hidden"):
        limits.append(f"{excluded['hidden']} group(s) of the residual stream are not pruned (prune_hidden=False)")
        hints.append("pass prune_hidden=True")
    if excluded.get("ignored"):
        limits.append(f"{excluded['ignored']} group(s) are kept whole by ignored_layers")
        hints.append("ignore fewer layers")
    if excluded.get("untouchable"):
        limits.append(f"{excluded['untouchable']} group(s) touch tied weights, which are never pruned")
    if attention:
        limits.append("attention layers keep at least one head each")
    hint = f"; to go further: {', '.join(hints)}" if hints else ""
    if cost != "MACs":
        limits.append("the table's latency of a layer need not fall with its width (a launch-bound layer keeps it)")
    return (f"cannot reach a speed-up of {speed_up}x in {cost}: stopped at {reached:.3f}x, the most these settings "
            f"allow, because {'; '.join(limits)}{hint}")


def _check_no_empty_layers(model: nn.Module) -> None:
    for name, m in model.named_modules():
        for attr in ("in_channels", "out_channels", "in_features", "out_features", "num_features"):
            if getattr(m, attr, 1) == 0:
                raise RuntimeError(f"internal error: pruning left '{name}' ({type(m).__name__}) with {attr}=0; "
                                   "please report this model")


def _group_candidates(dg, group, gi, importance, layer_macs, initial, max_ratio, layouts,
                      head_costs, round_to: int = 1) -> list[_Candidate]:
    n_ch = num_channel_groups(dg, group, layouts)
    # an attention group (q/k/v outputs + output projection inputs) is pruned in whole heads
    unit = head_size(dg, group, layouts)
    size = len(group[0].idxs) // n_ch // unit
    root = group[0].dep.target.module
    initial.setdefault(id(root), size)
    # A grouped conv left with one channel per group would turn into a depthwise conv: keep two.
    keep_at_least = max(1 if n_ch == 1 or unit > 1 else 2, int(round(initial[id(root)] * (1 - max_ratio))))
    chunk = round_to if unit == 1 else 1  # heads stay whole heads; channel counts stay multiples of round_to
    if chunk > 1:
        if size < chunk:
            return []
        keep_at_least = -(-keep_at_least // chunk) * chunk
    prunable = size - keep_at_least
    if prunable <= 0:
        return []
    try:
        imp = importance(_with_followers(dg, group, layouts))
    except (IndexError, RuntimeError) as e:  # Torch-Pruning mapped the group's channels inconsistently
        raise _untraceable(dg, group, e) from e
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
        is_out = dg.is_out_channel_pruning_fn(item.dep.handler)
        dim = channel_dim_size(m, is_out)
        if dim:
            cost += layer_macs[m] * (len(item.idxs) / dim) / size
        if m in layouts and not is_out:  # a decoder's keys and values read the same input columns as its queries
            cost += sum(layer_macs.get(f, 0.0) * (len(item.idxs) / dim) / size for _, f in layouts[m].followers)
    if unit > 1:  # q·kᵀ and attention·v of one head (and a decoder's key/value rows)
        cost += next((head_costs[it.dep.target.module] for it in group if it.dep.target.module in head_costs), 0.0)
    protected = _last_channel_of_each_part(group, imp, size, unit)
    order = [i for i in torch.argsort(imp).tolist() if i not in protected][:prunable]
    if chunk == 1:
        return [_Candidate(float(imp[i]), gi, (i,), cost, unit) for i in order]
    return [_Candidate(float(imp[c].mean()), gi, tuple(c), cost * len(c), unit)
            for c in removal_chunks(order, size, chunk)]


def _with_followers(dg: tp.DependencyGraph, group, layouts: dict[nn.Module, HeadLayout]):
    """``group`` as Torch-Pruning's importance should score it. A decoder's key and value projections are left out
    of the trace, so its importance would rank key/value groups by their query rows and output columns alone: their
    key and value rows join here as items of their own, each query channel paired with the key/value channel it
    reads (channel ``t`` of every query head of group ``u`` reads row ``u·d + t``). Other groups pass unchanged."""
    layout = group_layout(dg, group, layouts)
    if layout is None or not layout.follower_rows:  # query granularity keeps every key/value head
        return group
    unit, rows = layout.head_dim, layout.follower_rows  # channels of one key/value group; of one key/value head
    roots = group[0].root_idxs
    prune_rows = tp.pruner.function.prune_linear_out_channels
    items = [(item.dep, item.idxs, item.root_idxs) for item in group]
    items += [(tp.dependency.Dependency(prune_rows, prune_rows, node, node), [r // unit * rows + r % rows
                                                                              for r in roots], roots)
              for node in (tp.dependency.Node(linear, None, name) for name, linear in layout.followers)]
    scored = tp.dependency.Group()
    for dep, idxs, root_idxs in items:
        scored.add_dep(dep, idxs)
        scored[len(scored) - 1].root_idxs = root_idxs  # Torch-Pruning's importances read them per item
    return scored


def _last_channel_of_each_part(group, imp: torch.Tensor, size: int, unit: int) -> set[int]:
    """Units that must stay so that no layer loses all its channels.

    A group can span layers that each hold only part of its channels (the inputs of a concatenation, e.g.
    GhostNet's primary and cheap convs): pruning the group's weakest channels could empty one of them. The
    strongest unit of every such part is kept.
    """
    total = len(group[0].idxs)
    protected = set()
    for item in group:
        roots = item.root_idxs
        if not roots or len(set(roots)) >= total or any(r is None for r in roots):
            continue
        part = sorted({(r % (size * unit)) // unit for r in roots})
        protected.add(max(part, key=lambda u: float(imp[u])))
    return protected


def _untraceable(dg: tp.DependencyGraph, group, error: Exception) -> UnsupportedModuleError:
    root = group[0].dep.target.module
    return UnsupportedModuleError(_module_name(dg, root), root, "Torch-Pruning's dependency graph cannot follow its "
                                                                "channels (e.g. a "
                                              f"split or concatenation of channel ranges it does not model): {error}")


def _module_name(dg: tp.DependencyGraph, module: nn.Module) -> str:
    return dg._module2name.get(module, type(module).__name__)


def _choose(candidates: list[_Candidate], need: float, room: float) -> list[_Candidate]:
    """Lowest-score channels first; take about half the remaining gap per step, never overshooting ``room``."""
    chosen, acc = [], 0.0
    for c in sorted(candidates, key=lambda c: (c.score, c.group_index, c.local_indices)):
        if acc + c.cost > room:
            continue
        chosen.append(c)
        acc += c.cost
        if acc >= 0.5 * need:
            break
    return chosen


def _by_group(chosen: list[_Candidate]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for c in chosen:
        out.setdefault(c.group_index, []).extend(c.local_indices)
    return out


def _count_pruned_macs(model: nn.Module, attention: list, example_inputs: Any) -> tuple[float, dict]:
    """:func:`count_macs` after a pruning step; its forward also checks that the pruned model still runs.

    A module whose forward hard-codes channel counts (a fixed ``torch.split`` size, a head count used in a
    reshape) breaks here; the error names the innermost module that was running.
    """
    if attention:
        sync_head_counts(attention)
    try:
        return count_macs(model, example_inputs)
    except Exception as e:
        if attention:
            a = attention[0]
            raise UnsupportedModuleError(a.path, a.module,
                                         f"its forward fails with a pruned number of heads ({e})") from e
        path = _failing_module(model, example_inputs)
        raise UnsupportedModuleError(path, model.get_submodule(path),
                                     "its forward fails once channels are pruned: it hard-codes a channel count "
                                     "(e.g. split sizes) that Torch-Pruning cannot update; keep it whole with "
                                     f"ignored_layers, or fold it into plain layers ({type(e).__name__}: {e})") from e


def _failing_module(model: nn.Module, example_inputs: Any) -> str:
    """Path of the innermost module whose forward raises on ``example_inputs`` ("" for the model itself)."""
    names = {m: n for n, m in model.named_modules()}
    stack: list[str] = []

    def enter(module, _inputs) -> None:
        stack.append(names[module])

    def leave(_module, _inputs, _output) -> None:  # returns None: the output is left as it is
        stack.pop()

    handles = [m.register_forward_pre_hook(enter) for m in names] + [m.register_forward_hook(leave) for m in names]
    try:
        with torch.no_grad():
            call_model(model, example_inputs)
    except Exception:
        pass
    finally:
        for h in handles:
            h.remove()
    return stack[-1] if stack else ""


def module_widths(model: nn.Module) -> dict[str, dict[str, int]]:
    """Per-layer widths (in/out channels or features), the width specification of a pruned model."""
    widths = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            widths[name] = {"in": m.in_channels, "out": m.out_channels, "groups": m.groups}
        elif isinstance(m, nn.Linear):
            widths[name] = {"in": m.in_features, "out": m.out_features}
    return widths
