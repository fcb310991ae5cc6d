"""BatchNorm recalibration: after weights are generated or channels removed, the stored running statistics describe
another network; re-estimating them on a few training batches (no gradient) is what makes eval-mode accuracy of
such weights meaningful (MetaPruning's search, any pruned network before finetuning)."""
from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

from ..graph.tracing import classifier_logits


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable, num_batches: int | None = None,
                          params: dict[str, torch.Tensor] | None = None) -> int:
    """Reset every BatchNorm's running statistics and re-estimate them as the exact average over ``batches``.

    ``batches`` yields collated batches (dicts as from ``ClassificationData.collator``; a ``labels`` entry is
    ignored) or input tensors; at most ``num_batches`` are used. ``params`` swaps in other weights (e.g. generated
    ones, by name) — their BatchNorm buffers are the ones updated then. The model is left in eval mode. Returns the
    number of batches used.
    """
    if params is not None:
        params = dict(params)  # the tensors stay the caller's: their statistics are updated in place
        bn_names = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        missing = [f"{n}.{b}" for n in bn_names for b in ("running_mean", "running_var") if f"{n}.{b}" not in params]
        if missing:
            raise ValueError(f"recalibrate_batchnorm: params must hold the BatchNorm buffers too, missing {missing[:3]}")
        for n in bn_names:
            params.setdefault(f"{n}.num_batches_tracked", torch.zeros((), dtype=torch.long))
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        raise ValueError(f"recalibrate_batchnorm: {type(model).__name__} has no BatchNorm layer with running "
                         "statistics to recalibrate")
    if num_batches is not None and (isinstance(num_batches, bool) or not isinstance(num_batches, int)
                                    or num_batches < 1):
        raise ValueError(f"num_batches must be a positive integer or None, got {num_batches!r}")
    momenta = [m.momentum for m in norms]
    if params is None:
        for m in norms:
            m.reset_running_stats()
    else:
        for name, value in params.items():
            if name.endswith("running_mean"):
                value.zero_()
            elif name.endswith("running_var"):
                value.fill_(1.0)
            elif name.endswith("num_batches_tracked"):
                value.zero_()
    was_training = model.training
    used = 0
    try:
        for m in norms:
            m.momentum = None  # cumulative moving average: the exact mean over all batches, not the last ~20
        model.train()
        for batch in batches:
            if num_batches is not None and used >= num_batches:
                break
            inputs = batch if isinstance(batch, dict) else {"pixel_values": batch}
            device = next(iter(params.values())).device if params else next(model.parameters()).device
            classifier_logits(model, {k: v.to(device) for k, v in inputs.items()}, params)
            used += 1
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train(was_training)
    if used == 0:
        raise ValueError("recalibrate_batchnorm: batches yielded nothing")
    model.eval()
    return used


def recalibration_batches(data: Any, samples: int = 2000, batch_size: int = 250, seed: int = 0) -> list:
    """A seeded sample of ``samples`` training images of ``data`` (a ``ClassificationData``; no augmentation),
    collated: what BatchNorm statistics are re-estimated on, the same for every candidate network so they are compared
    on equal terms."""
    if not (hasattr(data, "train") and hasattr(data, "collator")):
        raise TypeError(f"data must be a ClassificationData (hf_metaprune.load_image_classification), got "
                        f"{type(data).__name__}")
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(seed)).tolist()[:samples]
    if not order:
        raise ValueError("BatchNorm recalibration needs training images; data.train is empty")
    collate = data.collator(augment=False)
    return [collate([data.train[j] for j in order[i:i + batch_size]]) for i in range(0, len(order), batch_size)]
