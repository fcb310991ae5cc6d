"""The meta-training objective: task loss of the transformed weights W' mixed with the loss of W' with the units
pruning would remove masked out, and statistics of how concentrated group importance is."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...pruning.groups import ChannelGroups
from ...training.finetune import classifier_logits, distillation_loss


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


def task_loss(module: nn.Module, state: dict[str, torch.Tensor], batch: dict[str, torch.Tensor],
              groups: ChannelGroups | None = None, removed: torch.Tensor | None = None,
              prune_aware_weight: float = 0.0, temperature: float = 0.0, teacher_logits: torch.Tensor | None = None,
              distill_weight: float = 0.0, distill_temperature: float = 4.0) -> tuple[torch.Tensor, dict[str, float]]:
    """The meta-training task term on one batch, differentiable in the tensors of ``state`` (``module``'s
    parameters and buffers by name, e.g. a metanetwork's output ``W'``).

    ``(1 − β)·ℓ(f(x; W')) + β·ℓ(f(x; W' ⊙ m))`` with ``β = prune_aware_weight`` and ``m`` the keep mask of the
    ``removed`` units (:meth:`ChannelGroups.pruned_units`); ``ℓ`` is cross-entropy, with ``distill_weight`` of it
    replaced by the KL divergence to ``teacher_logits``. Returns the loss and its parts as floats.
    """
    def term(logits: torch.Tensor) -> tuple[torch.Tensor, float]:
        ce = F.cross_entropy(logits, batch["labels"])
        if teacher_logits is None or distill_weight <= 0:
            return ce, float(ce.detach())
        kd = distillation_loss(logits, teacher_logits, distill_temperature)
        return (1 - distill_weight) * ce + distill_weight * kd, float(ce.detach())

    loss, parts = torch.zeros((), device=batch["labels"].device), {}
    if prune_aware_weight < 1.0:
        full, parts["ce_loss"] = term(classifier_logits(module, batch, state))
        loss = loss + (1 - prune_aware_weight) * full
    if prune_aware_weight > 0.0:
        if groups is None or removed is None:
            raise ValueError("task_loss: prune_aware_weight > 0 needs the channel groups and the removed units")
        keep = groups.keep_mask(state, removed, temperature)
        masked, parts["pruned_ce_loss"] = term(classifier_logits(module, batch, groups.apply_mask(state, keep)))
        loss = loss + prune_aware_weight * masked
    return loss, parts
