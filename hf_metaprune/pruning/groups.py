"""The coupled channel groups of a network as a public object: its pruning units (channels, or whole attention
heads), their parameter slices, sizes and MACs cost — the structure every pruning method works on.

A *pruning unit* is one channel of a coupled group (or one head): every parameter slice that disappears when it is
pruned (a conv's output filter, the BN entries, the next convs' input slices, ...). :class:`ChannelGroups` finds the
units ``prune_to_speedup`` prunes, emulates which ones it would remove at a target speed-up on any weights (ms instead
of a traced pruning), masks them differentiably, and gives DepGraph's group-norm penalty
``Σ_u γ_u ||W_u||²`` with ``γ = α^((max s − s_u)/(max s − min s))`` (sparse learning: weak units are pushed harder).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from ..graph.attention import HeadLayout, find_attention_modules, head_layouts
from ..graph.errors import UnsupportedModuleError
from ..graph.tracing import ROOT_MODULE_TYPES, build_dependency_graph
from .cost import count_macs
from .latency import LatencyTable


@dataclass
class _Slice:
    param: str  # parameter name in the model's state dict
    dim: int  # dimension the group's channels index
    index: torch.Tensor  # positions along ``dim``
    unit: torch.Tensor  # pruning unit each position belongs to
    is_bias: bool = False  # Torch-Pruning's magnitude importance ignores biases


@dataclass
class _Layer:
    """A layer's MACs and the pruning units on its input and output channels (for MACs under a mask)."""
    macs: float
    out_units: torch.Tensor | None  # unit of each output channel, num_units where never pruned (None: none is)
    in_units: torch.Tensor | None  # the same for input channels (None also where the outputs carry them)
    name: str = ""  # the module's name in the model (a LatencyTable's key)
    in_channels: int = 0
    out_channels: int = 0


class ChannelGroups:
    """The prunable coupled channel groups of a network, as named parameter slices.

    Built once per architecture/width (tracing is the expensive part); :meth:`unit_sq_norms`, :meth:`pruning_mask`
    and :meth:`apply_mask` then work on any dict of tensors with the model's parameter names — e.g. a metanetwork's
    differentiable output.
    """

    def __init__(self, slices: list[_Slice], group_of_unit: torch.Tensor, layers: list[_Layer] | None = None,
                 head_groups: set[int] | None = None, head_granularity: str = "kv_group"):
        self.slices, self.group_of_unit, self.layers = slices, group_of_unit, layers or []
        self.head_groups = set(head_groups or ())  # groups whose units are attention heads, not channels
        # what a decoder's head unit is (a key/value group, or one query head per group): widths and masks of these
        # groups go to prune_to_widths / prune_units with the same head_granularity
        self.head_granularity = head_granularity
        self._full_unit_costs: torch.Tensor | None = None

    @property
    def num_units(self) -> int:
        return self.group_of_unit.numel()

    @property
    def num_groups(self) -> int:
        return int(self.group_of_unit.max()) + 1 if self.num_units else 0

    @property
    def group_sizes(self) -> list[int]:
        """Units (channels, or heads) per group: the full width of each searchable dimension."""
        return torch.bincount(self.group_of_unit, minlength=self.num_groups).tolist()

    def widths_for_ratios(self, ratios, round_to: int | None = None) -> list[int]:
        """Per-group widths ``max(1, int(size · ratio))`` (MetaPruning's rounding) for one ratio per group, then
        :meth:`round_widths` when ``round_to`` is given."""
        ratios = list(ratios) if not isinstance(ratios, torch.Tensor) else ratios.tolist()
        if len(ratios) != self.num_groups or not all(isinstance(r, (int, float)) and 0 < r <= 1 for r in ratios):
            raise ValueError(f"ratios must be {self.num_groups} numbers in (0, 1] (one per coupled group), "
                             f"got {ratios!r}")
        return self.round_widths([max(1, int(size * r + 1e-9)) for size, r in zip(self.group_sizes, ratios)],
                                 round_to)

    def round_widths(self, widths, round_to: int | None) -> list[int]:
        """``widths`` with every channel count rounded down to a multiple of ``round_to`` (at least ``round_to``):
        fewer MACs only become less latency when widths fit the kernels' tiles. As in
        :func:`~hf_metaprune.prune_to_speedup`, a group not wider than ``round_to`` stays whole, a full width
        stays full, and heads stay whole heads (a group of heads is left as given)."""
        widths = check_widths(widths, self.group_sizes)
        round_to = check_round_to(round_to)
        if round_to == 1:
            return widths
        return [w if g in self.head_groups or w == size else size if size <= round_to else
                max(round_to, w // round_to * round_to)
                for g, (w, size) in enumerate(zip(widths, self.group_sizes))]

    def uniform_widths(self, speed_up: float, round_to: int | None = None) -> list[int]:
        """The widths of one ratio for every group (a uniform width multiplier), the largest ratio whose MACs meet
        ``speed_up`` (bisection; each group keeps at least one unit, or ``round_to`` channels)."""
        if isinstance(speed_up, bool) or not isinstance(speed_up, (int, float)) or speed_up < 1:
            raise ValueError(f"uniform_widths: speed_up must be a number >= 1, got {speed_up!r}")
        target, low, high = self.macs() / speed_up, 0.0, 1.0

        def macs(ratio: float) -> float:
            return self.macs(self.removed_for_widths(self.widths_for_ratios([ratio] * self.num_groups, round_to)))

        if macs(1e-9) > target * (1 + 1e-9):
            raise ValueError(f"uniform_widths: a {speed_up}x MACs speed-up is out of reach even at the narrowest "
                             f"uniform widths ({self.macs() / macs(1e-9):.2f}x with round_to={round_to})")
        for _ in range(40):
            mid = (low + high) / 2
            if macs(mid) <= target:
                low = mid
            else:
                high = mid
        return self.widths_for_ratios([max(low, 1e-9)] * self.num_groups, round_to)

    def removed_for_widths(self, widths, params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Boolean per unit: what pruning every group to ``widths[g]`` units removes.

        Without ``params`` the first units of each group are kept (MetaPruning's top-left crop); with ``params``
        the strongest by group L2 norm are (DepGraph's criterion, ties to the lower index).
        """
        widths = check_widths(widths, self.group_sizes)
        removed = torch.zeros(self.num_units, dtype=torch.bool)
        score = None if params is None else self.unit_sq_norms(
            {k: v.detach() for k, v in params.items()}, include_bias=False).cpu()
        start = 0
        for size, width in zip(self.group_sizes, widths):
            if score is None:
                removed[start + width:start + size] = True
            else:
                order = torch.argsort(score[start:start + size], descending=True, stable=True)
                removed[start + order[width:]] = True
            start += size
        return removed

    def removed_for_speedup(self, scores: torch.Tensor, speed_up: float, round_to: int | None = None,
                            latency_table: LatencyTable | None = None) -> torch.Tensor:
        """Boolean per unit: the lowest ``scores`` removed until the network reaches ``speed_up`` in MACs, then
        every removed unit the target still affords given back (highest score first), so no removed unit could stay
        without missing it. Every group keeps its highest-scoring unit; with ``round_to`` channels go in chunks that
        keep each group's width a multiple of it (see :meth:`round_widths`). For a score a method generated (STAMP's
        keep-logits, a random draw); a ValueError when the target is out of reach. With ``latency_table`` the
        target is the table's estimated latency (:meth:`latency`) instead of MACs."""
        if isinstance(speed_up, bool) or not isinstance(speed_up, (int, float)) or speed_up < 1:
            raise ValueError(f"removed_for_speedup: speed_up must be a number >= 1, got {speed_up!r}")
        scores = torch.as_tensor(scores).detach().float().cpu()
        if scores.shape != (self.num_units,):
            raise ValueError(f"removed_for_speedup: scores must hold one value per unit ({self.num_units}), got "
                             f"shape {tuple(scores.shape)}")
        round_to = check_round_to(round_to)
        chunks, chunk_group = [], []  # removable chunks of units, each group's in the order they must go
        for g, size in enumerate(self.group_sizes):
            members = torch.nonzero(self.group_of_unit == g).flatten()
            ranked = members[torch.argsort(scores[members], stable=True)].tolist()
            step = 1 if g in self.head_groups else round_to  # the top ``step`` units always stay
            if size <= step:
                continue
            for part in removal_chunks(ranked[:size - step], size, step):
                chunks.append(part)
                chunk_group.append(g)
        order = sorted(range(len(chunks)), key=lambda c: float(scores[chunks[c]].mean()))

        def cost(removed: torch.Tensor | None = None) -> float:
            return self.macs(removed) if latency_table is None else self.latency(removed, latency_table)

        target = cost() / speed_up * (1 + 1e-9)

        def removed(taken) -> torch.Tensor:
            out = torch.zeros(self.num_units, dtype=torch.bool)
            for c in taken:
                out[chunks[c]] = True
            return out

        if cost(removed(order)) > target:
            raise ValueError(f"removed_for_speedup: a {speed_up}x {'latency' if latency_table else 'MACs'} speed-up "
                             f"is out of reach even with one unit per coupled group (round_to={round_to})")
        low, high = 0, len(order)  # the fewest removals meeting the target: MACs fall as more units go
        while low < high:
            mid = (low + high) // 2
            if cost(removed(order[:mid])) <= target:
                high = mid
            else:
                low = mid + 1
        taken = set(order[:low])
        for c in reversed(order[:low]):  # give back, highest score first, what the target still affords
            later = c + 1 < len(chunks) and chunk_group[c + 1] == chunk_group[c] and c + 1 in taken
            if round_to > 1 and later:  # chunks leave a group in order, or its width stops being a multiple
                continue
            taken.discard(c)
            if cost(removed(taken)) > target:
                taken.add(c)
        return removed(taken)

    @classmethod
    def from_model(cls, model: nn.Module, example_inputs: Any, head_granularity: str = "kv_group"
                   ) -> "ChannelGroups":
        """The groups :func:`~hf_metaprune.prune_to_speedup` prunes, with the same units (channels or heads)."""
        return cls.from_coupled_groups(model, example_inputs,
                                       *coupled_groups(model, example_inputs, head_granularity), head_granularity)

    @classmethod
    def from_coupled_groups(cls, model: nn.Module, example_inputs: Any, dg: tp.DependencyGraph, tp_groups: list,
                            layouts: dict[nn.Module, HeadLayout], head_granularity: str = "kv_group"
                            ) -> "ChannelGroups":
        """:meth:`from_model` on groups already traced by :func:`coupled_groups` (no second trace)."""
        names = {m: n for n, m in model.named_modules()}
        slices, group_of_unit, offset, head_groups = [], [], 0, set()
        _, layer_macs = count_macs(model, example_inputs)
        for gi, group in enumerate(tp_groups):
            layout = group_layout(dg, group, layouts)
            head = layout.head_dim if layout else 1
            if layout:
                head_groups.add(gi)
            size = len(group[0].idxs) // num_channel_groups(dg, group, layouts)
            for item in group:
                target, is_out = item.dep.target.module, dg.is_out_channel_pruning_fn(item.dep.handler)
                idx = torch.as_tensor(item.idxs, dtype=torch.long)
                unit = torch.as_tensor(item.root_idxs, dtype=torch.long) % size // head + offset
                if isinstance(target, nn.Parameter):  # Torch-Pruning prunes a loose parameter's last dimension
                    name = dg._param_to_name[target]
                    if len(idx) and int(idx.max()) >= target.shape[-1]:
                        path = name.rpartition(".")[0]
                        raise UnsupportedModuleError(path, model.get_submodule(path), f"Torch-Pruning maps channels "
                                                     f"beyond the last dimension of '{name}' ({target.shape[-1]}): a "
                                                     "tensor shared across layers or indexed by something else")
                    slices.append(_Slice(name, target.dim() - 1, idx, unit))
                    continue
                if target not in names:
                    continue
                slices += _follower_slices(layouts.get(target), is_out, idx, unit, offset)
                for pname, p in target.named_parameters(recurse=False):
                    full = f"{names[target]}.{pname}" if names[target] else pname
                    bias = pname == "bias"
                    if isinstance(target, nn.Embedding):  # rows are tokens; channels are columns
                        slices.append(_Slice(full, 1, idx, unit, bias))
                    elif is_out or p.dim() == 1 and _is_depthwise(target):
                        slices.append(_Slice(full, 0, idx, unit, bias))
                    elif p.dim() > 1 and getattr(target, "groups", 1) == 1:  # grouped convs: outputs carry it
                        slices.append(_Slice(full, 1, idx, unit, bias))
            for name, module, attr in layout.per_head if layout else ():
                p = getattr(module, attr)  # a per-head table: entry h of its last dimension belongs to head h
                heads = torch.arange(p.shape[-1])
                slices.append(_Slice(name, p.dim() - 1, heads, heads + offset, is_bias=True))
            group_of_unit.append(torch.full((size // head,), gi, dtype=torch.long))
            offset += size // head
        group_of_unit = torch.cat(group_of_unit) if group_of_unit else torch.zeros(0, dtype=torch.long)
        return cls(slices, group_of_unit, _layers(model, names, slices, layer_macs, len(group_of_unit)), head_groups,
                   head_granularity)

    def unit_sq_norms(self, params: dict[str, torch.Tensor], include_bias: bool = True) -> torch.Tensor:
        """Squared L2 norm of every pruning unit (differentiable in ``params``)."""
        device = next(iter(params.values())).device
        out = torch.zeros(self.num_units, device=device, dtype=torch.float32)
        for s in self.slices:
            if s.is_bias and not include_bias:
                continue
            p = params[s.param]
            v = p.index_select(s.dim, s.index.to(device)).float().pow(2)
            v = v.movedim(s.dim, 0).reshape(len(s.index), -1).sum(1)
            out = out.index_add(0, s.unit.to(device), v)
        return out

    def group_reduce(self, values: torch.Tensor, reduce: str) -> torch.Tensor:
        """Per-group ``amax`` / ``amin`` / ``mean`` of per-unit values, broadcast back to units."""
        g = self.group_of_unit.to(values.device)
        init = torch.zeros(self.num_groups, device=values.device, dtype=values.dtype)
        return init.scatter_reduce(0, g, values, reduce=reduce, include_self=False)[g]

    def gamma(self, norms: torch.Tensor, alpha: float) -> torch.Tensor:
        """DepGraph's per-unit weights: ``α`` for the weakest unit of a group, 1 for the strongest."""
        norms = norms.detach()
        hi, lo = self.group_reduce(norms, "amax"), self.group_reduce(norms, "amin")
        return alpha ** ((hi - norms) / (hi - lo).clamp_min(1e-12))


    # ---- the pruning mask ------------------------------------------------------------------------------------
    def macs(self, removed: torch.Tensor | None = None) -> float:
        """MACs of the layers with the units in the boolean ``removed`` pruned (all units kept: ``None``)."""
        if removed is None:
            return sum(layer.macs for layer in self.layers)
        removed = torch.cat([removed.cpu(), removed.new_zeros(1, device="cpu")])  # index num_units: never removed
        total = 0.0
        for layer in self.layers:
            keep = 1.0
            for units in (layer.out_units, layer.in_units):
                if units is not None:
                    keep *= 1.0 - float(removed[units].sum()) / len(units)
            total += layer.macs * keep
        return total

    def latency(self, removed: torch.Tensor | None, table: LatencyTable) -> float:
        """Seconds the ``table`` (measured on this model) estimates for the model with the ``removed`` units pruned:
        the searches' latency constraint, without building a model. Layers the table does not time are costed by
        their MACs at its seconds per MAC; the rest of the forward scales with the tabled layers' share."""
        removed = torch.zeros(self.num_units, dtype=torch.bool) if removed is None else removed.cpu()
        ext = torch.cat([removed, removed.new_zeros(1)])
        batch_scale = table.macs / max(self.macs(), 1.0)  # this object's MACs are per its traced inputs' batch
        now = full = untabled = 0.0
        for layer in self.layers:
            kept, fraction = {}, 1.0
            for side, units, width in (("out", layer.out_units, layer.out_channels),
                                       ("in", layer.in_units, layer.in_channels)):
                share = 1.0 if units is None else 1.0 - float(ext[units].sum()) / len(units)
                kept[side], fraction = round(width * share), fraction * share
            entry = table.layers.get(layer.name)
            if entry is None:
                untabled += layer.macs * fraction * batch_scale * table.seconds_per_mac
                continue
            if entry.get("depthwise"):
                kept["in"] = kept["out"]
            now += table.layer_seconds(layer.name, kept["in"], kept["out"])
            full += entry["grid"][-1][-1]
        return now + untabled + table.other_seconds * (now / full if full else 1.0)

    def expected_macs(self, keep: torch.Tensor) -> torch.Tensor:
        """MACs of the layers when unit ``u`` is kept with probability ``keep[u]`` (independently): each layer's
        MACs times the mean keep of its output units times that of its input units. Differentiable in ``keep``
        (a budget term for generated masks); a 0/1 ``keep`` gives :meth:`macs` of the removed units exactly."""
        ext = torch.cat([keep.float(), keep.new_ones(1, dtype=torch.float32)])  # index num_units: never removed
        total = ext.new_zeros(())
        for layer in self.layers:
            factor = ext.new_ones(())
            for units in (layer.out_units, layer.in_units):
                if units is not None:
                    factor = factor * ext[units.to(ext.device)].mean()
            total = total + layer.macs * factor
        return total

    def unit_costs(self, removed: torch.Tensor | None = None) -> torch.Tensor:
        """MACs freed by removing each unit now (``removed``: the units already gone; ``None``: none): every layer
        it touches loses 1/width of its current MACs. The full network's costs are a constant, computed once."""
        if removed is None:
            if self._full_unit_costs is None:
                self._full_unit_costs = self.unit_costs(torch.zeros(self.num_units, dtype=torch.bool))
            return self._full_unit_costs
        ext = torch.cat([removed, removed.new_zeros(1)])
        cost = torch.zeros(self.num_units + 1, dtype=torch.float64)
        for layer in self.layers:
            sides = [u for u in (layer.out_units, layer.in_units) if u is not None]
            kept = [len(u) - int(ext[u].sum()) for u in sides]
            macs = layer.macs
            for u, k in zip(sides, kept):
                macs *= k / len(u)
            for u, k in zip(sides, kept):
                cost.index_add_(0, u, torch.full((len(u),), macs / max(k, 1), dtype=torch.float64))
        return cost[:-1]

    def pruned_units(self, params: dict[str, torch.Tensor], speed_up: float, tolerance: float = 0.01,
                     max_pruning_ratio: float = 0.95, round_to: int | None = None) -> torch.Tensor:
        """The units (boolean, per unit) that :func:`~hf_metaprune.prune_to_speedup` with ``group_l2`` (and the same
        ``round_to``) removes from ``params`` to reach ``speed_up`` in MACs.

        Emulates its loop on the MACs model instead of the network (milliseconds instead of a second): each step
        ranks the remaining units by their norm — without the slices already pruned — over the mean of what is
        left of their group, and removes the lowest (with ``round_to``: chunks that keep each channel group's width
        a multiple of it) until half of the remaining MACs gap is closed (never more than ``max_pruning_ratio`` of a
        group). Ties aside, it removes the same units.
        """
        round_to = check_round_to(round_to)
        detached = {s.param: params[s.param].detach().double().cpu() for s in self.slices}
        groups = self.group_of_unit
        sizes = torch.bincount(groups, minlength=self.num_groups)
        keep_at_least = torch.clamp(torch.round(sizes * (1 - max_pruning_ratio)), min=1).long().tolist()
        members = [torch.nonzero(groups == g).flatten() for g in range(self.num_groups)]
        macs0 = self.macs()
        target, floor = macs0 / speed_up, macs0 / (speed_up * (1 + tolerance))
        removed = torch.zeros(self.num_units, dtype=torch.bool)
        macs = macs0
        for _ in range(200):
            if macs <= target:
                break
            kept = ~removed
            # a unit's norm loses the slices that other groups' pruning already removed (a conv's input columns)
            sq_cpu = self.unit_sq_norms(self.apply_mask(detached, kept.double()), include_bias=False).double()
            mean = torch.zeros(self.num_groups, dtype=torch.float64).index_add_(0, groups[kept], sq_cpu[kept])
            mean = mean / torch.bincount(groups[kept], minlength=self.num_groups).clamp_min(1)
            score = sq_cpu / mean[groups].clamp_min(1e-12)
            cost = self.unit_costs(removed)
            candidates = []  # (score, group, units, MACs freed), as prune_to_speedup's candidates
            for g, units in enumerate(members):
                left = units[kept[units]]
                chunk = 1 if g in self.head_groups else round_to
                if len(left) < chunk:
                    continue
                prunable = len(left) - -(-keep_at_least[g] // chunk) * chunk
                if prunable <= 0:
                    continue
                order = left[torch.argsort(score[left], stable=True)][:prunable].tolist()
                candidates += [(float(score[p].mean()), g, p, float(cost[p].sum()))
                               for p in removal_chunks(order, len(left), chunk)]
            if not candidates:
                break
            need, room, acc, chosen = macs - target, macs - floor, 0.0, []
            for c in sorted(candidates, key=lambda c: (c[0], c[1], c[2])):
                if acc + c[3] > room:
                    continue
                chosen.append(c)
                acc += c[3]
                if acc >= 0.5 * need:
                    break
            if not chosen:
                chosen = [min(candidates, key=lambda c: (c[3], c[0]))]
            for c in chosen:
                removed[c[2]] = True
            macs = self.macs(removed)
        return removed

    def keep_mask(self, params: dict[str, torch.Tensor], removed: torch.Tensor,
                  temperature: float = 0.0) -> torch.Tensor:
        """Per-unit mask, 1 kept and 0 for the ``removed`` units (see :meth:`pruned_units`).

        ``temperature > 0`` makes it straight-through: hard in the forward pass, the gradient of
        ``sigmoid((score − threshold) / temperature)`` in the backward pass (score: a unit's norm over the mean of
        its group's kept units), so the objective can also move units across the pruning threshold.
        """
        device = params[self.slices[0].param].device if self.slices else torch.device("cpu")
        hard = (~removed).to(device=device, dtype=torch.float32)
        if temperature <= 0 or not removed.any() or removed.all():
            return hard
        kept = ~removed
        sq = self.unit_sq_norms(params, include_bias=False)
        mean = self.group_reduce(torch.where(kept.to(sq.device), sq, torch.zeros_like(sq)), "sum")
        mean = mean / self.group_reduce(kept.to(sq.device, sq.dtype), "sum").clamp_min(1)
        score = sq / mean.clamp_min(1e-12)  # differentiable in params
        s = score.detach().cpu()
        threshold = (s[removed].max() + s[kept].min()) / 2
        soft = torch.sigmoid((score - threshold.to(score.device)) / temperature)
        return hard + (soft - soft.detach())  # exactly hard in the forward pass

    def apply_mask(self, params: dict[str, torch.Tensor], keep: torch.Tensor) -> dict[str, torch.Tensor]:
        """``params`` with every slice of each unit scaled by ``keep[unit]`` (0: as if the unit were pruned)."""
        factors: dict[tuple[str, int], torch.Tensor] = {}
        for s in self.slices:
            p = params[s.param]
            key = (s.param, s.dim)
            if key not in factors:
                factors[key] = torch.ones(p.shape[s.dim], device=p.device, dtype=keep.dtype)
            factors[key] = factors[key].index_copy(0, s.index.to(p.device), keep[s.unit.to(keep.device)].to(p.device))
        out = dict(params)
        for (name, dim), f in factors.items():
            shape = [1] * out[name].dim()
            shape[dim] = -1
            out[name] = out[name] * f.view(shape).to(out[name].dtype)
        return out


def _follower_slices(layout: HeadLayout | None, is_out: bool, idx: torch.Tensor, unit: torch.Tensor,
                     offset: int) -> list[_Slice]:
    """A decoder's key/value projections, left out of the trace: their input columns go with the query projection's
    (``is_out=False``), their rows with the unit owning their head (``layout.follower_rows`` rows each)."""
    if layout is None or not layout.followers or (is_out and not layout.follower_rows):
        return []
    out = []
    for name, linear in layout.followers:
        if not is_out:
            out.append(_Slice(f"{name}.weight", 1, idx, unit))
            continue
        rows = torch.arange(linear.out_features)
        out += [_Slice(f"{name}.{pname}", 0, rows, rows // layout.follower_rows + offset, pname == "bias")
                for pname, _ in linear.named_parameters(recurse=False)]
    return out


def _layers(model: nn.Module, names: dict[nn.Module, str], slices: list[_Slice],
            layer_macs: dict[nn.Module, float], num_units: int) -> list[_Layer]:
    """The MACs model: every leaf layer with MACs and the units on its input / output channel dimensions."""
    by_param = {(s.param, s.dim): s for s in slices if not s.is_bias}
    layers = []
    for module, macs in layer_macs.items():
        weight = getattr(module, "weight", None)
        if macs <= 0 or not isinstance(weight, torch.Tensor) or weight.dim() < 2 or any(module.children()):
            continue
        name = f"{names[module]}.weight"
        units = []
        for dim in (0, 1):
            s = by_param.get((name, dim))
            if s is None:
                units.append(None)
                continue
            full = torch.full((weight.shape[dim],), num_units, dtype=torch.long)
            full[s.index] = s.unit
            units.append(full)
        out_units, in_units = units
        if _is_depthwise(module):  # one channel in, one out: the output units carry both sides
            in_units = None
        layers.append(_Layer(float(macs), out_units, in_units, names[module], weight.shape[1] * getattr(
            module, "groups", 1), weight.shape[0]))
    return layers


def _is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.conv._ConvNd) and module.groups == module.out_channels > 1


def sparsity_penalty(groups: ChannelGroups, params: dict[str, torch.Tensor], alpha: float = 16.0,
                     relative: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``Σ_u γ_u ||W_u||²`` and the per-unit norms ``||W_u||`` (detached, for statistics).

    ``relative=True`` divides each unit's term by its group's mean ``||W_u||²`` (not detached): scaling a whole
    group then changes nothing, so the only way down is to concentrate the norm in fewer units — which is what
    the group criterion ranks on (Torch-Pruning normalises importance by the group mean).
    """
    sq = groups.unit_sq_norms(params)
    norms = sq.detach().sqrt()
    weighted = groups.gamma(norms, alpha) * sq
    if relative:
        weighted = weighted / groups.group_reduce(sq, "mean").clamp_min(1e-12)
    return weighted.sum(), norms


def prunable_groups(dg: tp.DependencyGraph, ignored: set[nn.Module], prune_hidden: bool = True,
                     untouchable: set[nn.Module] = frozenset()) -> tuple[list, dict[str, int]]:
    """Groups whose channels feed another layer: a model's outputs (e.g. class logits) are never pruned.

    Without ``prune_hidden`` (transformers) only heads and MLP neurons are pruned: a group touching a LayerNorm or
    an embedding (the residual stream: RMSNorm weights are loose parameters to Torch-Pruning, so a bare decoder is
    recognised by its token embedding) or feeding the output layer (e.g. BERT's pooler) is left alone. Groups touching an
    ``untouchable`` module (tied weights) are left alone too. Also
    returns how many groups each of these rules kept whole, for error messages.
    """
    is_out = dg.is_out_channel_pruning_fn
    candidates, output_layers = [], set()
    for group in dg.get_all_groups(root_module_types=ROOT_MODULE_TYPES):
        consumers = [item.dep.target.module for item in group if not is_out(item.dep.handler)]
        if any(isinstance(m, ROOT_MODULE_TYPES) for m in consumers):
            candidates.append((group, consumers))
        else:
            output_layers.update(item.dep.target.module for item in group if is_out(item.dep.handler))
    groups, excluded = [], {"ignored": 0, "hidden": 0, "untouchable": 0}
    for group, consumers in candidates:
        if any(item.dep.target.module in ignored and is_out(item.dep.handler) for item in group):
            excluded["ignored"] += 1
        elif any(item.dep.target.module in untouchable for item in group):
            excluded["untouchable"] += 1
        elif not prune_hidden and (any(isinstance(item.dep.target.module, (nn.LayerNorm, nn.Embedding))
                                       for item in group) or any(m in output_layers for m in consumers)):
            excluded["hidden"] += 1
        else:
            groups.append(group)
    return groups, excluded


def num_channel_groups(dg: tp.DependencyGraph, group, layouts: dict[nn.Module, HeadLayout]) -> int:
    """Grouped (non-depthwise) convs and GroupNorm force pruning the same local channel in every group, so
    each group keeps the same width (a GroupNorm's groups then still hold the channels they held before); a fused
    query/key/value projection holds its heads three times (queries, keys, values) and loses a head from each."""
    layout = group_layout(dg, group, layouts)
    n = layout.parts if layout else 1
    for item in group:
        m = item.dep.target.module
        if isinstance(m, nn.modules.conv._ConvNd) and 1 < m.groups < m.out_channels:
            n = math.lcm(n, m.groups)
        elif isinstance(m, nn.GroupNorm) and m.num_groups > 1:
            n = math.lcm(n, m.num_groups)
    return n


def group_layout(dg: tp.DependencyGraph, group, layouts: dict[nn.Module, HeadLayout]) -> HeadLayout | None:
    """The head layout of a group of query/key/value output channels (pruned in whole heads); None for others."""
    return next((layouts[it.dep.target.module] for it in group if it.dep.target.module in layouts
                 and dg.is_out_channel_pruning_fn(it.dep.handler)), None)


def head_size(dg: tp.DependencyGraph, group, layouts: dict[nn.Module, HeadLayout]) -> int:
    """``head_dim`` for a group of query/key/value output channels (pruned in whole heads), else 1."""
    layout = group_layout(dg, group, layouts)
    return layout.head_dim if layout else 1


def coupled_groups(model: nn.Module, example_inputs: Any, head_granularity: str = "kv_group"
                   ) -> tuple[tp.DependencyGraph, list, dict[nn.Module, HeadLayout]]:
    """Torch-Pruning's dependency graph of ``model``, its prunable coupled groups (the order every method and
    :class:`ChannelGroups` index them by) and the head layout of each traced attention projection."""
    attention = find_attention_modules(model)
    layouts = head_layouts(attention, head_granularity)
    dg = build_dependency_graph(model, example_inputs)
    return dg, prunable_groups(dg, ignored=set(), prune_hidden=not attention, untouchable=tied_modules(model))[0], \
        layouts


def tied_modules(model: nn.Module) -> set[nn.Module]:
    """Modules holding a Parameter object shared with another name (e.g. tied input/output embeddings): never
    pruned in any role, since pruning one side would untie them."""
    by_id: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), []).append(name)
    return {model.get_submodule(n.rpartition(".")[0]) for names in by_id.values() if len(names) > 1 for n in names}


def unit_channel_indices(dg: tp.DependencyGraph, group, units, layouts: dict[nn.Module, HeadLayout]) -> list[int]:
    """The channel indices (in the group's root layer) of the pruning ``units`` of ``group`` (a unit is a channel
    or a head; grouped convs and fused q/k/v projections repeat each unit in every channel group)."""
    head = head_size(dg, group, layouts)
    n_ch = num_channel_groups(dg, group, layouts)
    size = len(group[0].idxs) // n_ch
    return sorted(c + g * size for u in units for c in range(u * head, (u + 1) * head) for g in range(n_ch))


def removal_chunks(order: list[int], size: int, chunk: int) -> list[list[int]]:
    """``order`` (units of one group of ``size``, in the order they go) cut into what pruning to multiples of
    ``chunk`` removes at once: first the ``size % chunk`` units that trim the group to a multiple, then whole
    chunks (an incomplete last one stays)."""
    first = size % chunk
    whole = [order[i:i + chunk] for i in range(first, len(order), chunk)]
    return ([order[:first]] if first else []) + [c for c in whole if len(c) == chunk]


def check_round_to(round_to: int | None) -> int:
    """``round_to`` as an int (``None``: 1), or a ValueError saying what is expected."""
    if round_to is None:
        return 1
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise ValueError(f"round_to must be a positive integer (e.g. 8) or None, got {round_to!r}")
    return round_to


def check_widths(widths, sizes: list[int]) -> list[int]:
    """``widths`` as a list of ints, one per group in ``1..size``, or a ValueError naming the first bad one."""
    if isinstance(widths, torch.Tensor):
        widths = widths.tolist()
    if isinstance(widths, dict):
        widths = [widths.get(g, size) for g, size in enumerate(sizes)]
    try:
        widths = list(widths)
    except TypeError:
        raise TypeError(f"widths must be a list with one width per coupled group ({len(sizes)}), got "
                        f"{type(widths).__name__}") from None
    if len(widths) != len(sizes):
        raise ValueError(f"widths must hold one width per coupled group: {len(sizes)} groups, got {len(widths)}")
    for g, (w, size) in enumerate(zip(widths, sizes)):
        if isinstance(w, bool) or not isinstance(w, int) or not 1 <= w <= size:
            raise ValueError(f"widths[{g}] must be an integer in [1, {size}] (the group's units), got {w!r}")
    return widths
