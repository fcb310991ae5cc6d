"""The sparse-learning objective on Torch-Pruning's coupled channel groups (DepGraph's group-norm penalty).

A *pruning unit* is one channel of a coupled group — or one attention head in a transformer — : every parameter
slice that disappears when it is pruned (a conv's output filter, the BN entries, the next convs' input slices, ...). Its squared norm is the
sum of the squared slices. The penalty ``Σ_u γ_u ||W_u||²`` with ``γ = α^((max s − s_u)/(max s − min s))``
(per coupled group, treated as a constant) pushes already-weak units harder, so importance concentrates.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..graph.attention import find_attention_modules
from ..graph.tracing import build_dependency_graph
from ..pruning.speedup import _channel_groups, _head_size, _prunable_groups


@dataclass
class _Slice:
    param: str  # parameter name in the model's state dict
    dim: int  # dimension the group's channels index
    index: torch.Tensor  # positions along ``dim``
    unit: torch.Tensor  # pruning unit each position belongs to


class ChannelGroups:
    """The prunable coupled channel groups of a network, as named parameter slices.

    Built once per architecture/width (tracing is the expensive part); :meth:`unit_sq_norms` then works on any
    dict of tensors with the model's parameter names — e.g. a metanetwork's differentiable output.
    """

    def __init__(self, slices: list[_Slice], group_of_unit: torch.Tensor):
        self.slices, self.group_of_unit = slices, group_of_unit

    @property
    def num_units(self) -> int:
        return self.group_of_unit.numel()

    @property
    def num_groups(self) -> int:
        return int(self.group_of_unit.max()) + 1 if self.num_units else 0

    @classmethod
    def from_model(cls, model: nn.Module, example_inputs: Any) -> "ChannelGroups":
        """The groups :func:`~hf_metaprune.prune_to_speedup` prunes, with the same units (channels or heads)."""
        dg = build_dependency_graph(model, example_inputs)
        names = {m: n for n, m in model.named_modules()}
        attention = find_attention_modules(model)
        head_dims = {p: a.head_dim for a in attention for p in a.projections}
        slices, group_of_unit, offset = [], [], 0
        for gi, group in enumerate(_prunable_groups(dg, ignored=set(), prune_hidden=not attention)[0]):
            head = _head_size(dg, group, head_dims)
            size = len(group[0].idxs) // _channel_groups(group)
            for item in group:
                target, is_out = item.dep.target.module, dg.is_out_channel_pruning_fn(item.dep.handler)
                idx = torch.as_tensor(item.idxs, dtype=torch.long)
                unit = torch.as_tensor(item.root_idxs, dtype=torch.long) % size // head + offset
                if isinstance(target, nn.Parameter):  # Torch-Pruning prunes a loose parameter's last dimension
                    slices.append(_Slice(dg._param_to_name[target], target.dim() - 1, idx, unit))
                    continue
                if target not in names:
                    continue
                for pname, p in target.named_parameters(recurse=False):
                    full = f"{names[target]}.{pname}" if names[target] else pname
                    if isinstance(target, nn.Embedding):  # rows are tokens; channels are columns
                        slices.append(_Slice(full, 1, idx, unit))
                    elif is_out or p.dim() == 1 and _is_depthwise(target):
                        slices.append(_Slice(full, 0, idx, unit))
                    elif p.dim() > 1 and getattr(target, "groups", 1) == 1:  # grouped convs: outputs carry it
                        slices.append(_Slice(full, 1, idx, unit))
            group_of_unit.append(torch.full((size // head,), gi, dtype=torch.long))
            offset += size // head
        return cls(slices, torch.cat(group_of_unit) if group_of_unit else torch.zeros(0, dtype=torch.long))

    def unit_sq_norms(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Squared L2 norm of every pruning unit (differentiable in ``params``)."""
        device = next(iter(params.values())).device
        out = torch.zeros(self.num_units, device=device, dtype=torch.float32)
        for s in self.slices:
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


def group_norm_stats(groups: ChannelGroups, norms: torch.Tensor, weak_threshold: float = 0.1,
                     reference: torch.Tensor | None = None) -> dict[str, float]:
    """How concentrated importance is.

    ``weak_group_fraction``: share of units whose norm is below ``weak_threshold`` × their group's mean norm in
    ``reference`` (e.g. the untransformed network's unit norms; default: ``norms`` themselves). Quantiles are of
    the norms relative to their group's current mean (the scale the pruning criterion ranks on).
    """
    reference = norms if reference is None else reference
    weak = norms < weak_threshold * groups.group_reduce(reference, "mean")
    relative = norms / groups.group_reduce(norms, "mean").clamp_min(1e-12)
    q = torch.quantile(relative.float(), torch.tensor([0.1, 0.5, 0.9], device=relative.device))
    return {"weak_group_fraction": float(weak.float().mean()),
            "group_norm_p10": float(q[0]), "group_norm_p50": float(q[1]), "group_norm_p90": float(q[2])}
