"""What a network costs: MACs counted by PyTorch's FLOP counter, and latency measured side by side."""
from __future__ import annotations

import copy
import statistics
import time
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from ..graph.tracing import call_model


def count_macs_and_params(model: nn.Module, example_inputs: Any) -> tuple[float, int]:
    """MACs of one forward on ``example_inputs`` (convolutions and matrix products) and parameter count."""
    macs, _ = count_macs(model, example_inputs)
    return macs, sum(p.numel() for p in model.parameters())


# PyTorch counts fused attention only for its GPU kernels; the CPU kernel costs the same two matrix products.
_ATTENTION_FLOPS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu:
                    lambda q, k, v, *args, out_shape=None, **kwargs: sdpa_flop_count(q, k, v)}


def count_macs(model: nn.Module, example_inputs: Any) -> tuple[float, dict[nn.Module, float]]:
    """Total and per-module MACs (inclusive of submodules), counted by PyTorch's ``FlopCounterMode`` (FLOPs / 2)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_ATTENTION_FLOPS) as counter:
            call_model(model, example_inputs)
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
            call_model(m, example_inputs)
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(runs):
        for k, m in models.items():
            start = time.perf_counter()
            call_model(m, example_inputs)
            times[k].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}
