"""Latency as a pruning cost: a per-layer lookup table measured on the machine at hand.

MACs say little about speed: a convolution at 20 channels can be as slow as one at 24 (kernels work in tiles), a
depthwise convolution is slow for its MACs, the first layers of a CNN run at large resolutions. The table times
every convolution and linear layer of a model at a grid of input and output widths (batch size and memory format
given), and :func:`~hf_metaprune.prune_to_speedup` with ``latency_table=`` then meets a latency target instead of a
MACs one.
"""
from __future__ import annotations

import bisect
import copy
import json
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from .._io import write_json
from ..graph.tracing import call_model
from .cost import count_macs

DEFAULT_RATIOS = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)


@dataclass
class LatencyTable:
    """Measured seconds of every ``nn.Conv2d`` / ``nn.Linear`` of a model at a grid of widths.

    ``layers[name]`` holds the layer's full ``in`` / ``out`` widths, the measured channel counts of each side and the
    seconds at each pair (``grid[i][j]``: input count ``in_grid[i]``, output count ``out_grid[j]``; a depthwise
    convolution has one side). Other layers' MACs (attention products, grouped convolutions) are costed at
    ``seconds_per_mac``; ``other_seconds`` is the rest of the full model's forward (norms, activations, additions),
    scaled with the tabled layers' share as the model shrinks. Where the layers timed alone add up to more than the
    whole model, every layer time is scaled down to it: the estimate of the measured model is its measured time.
    """

    batch_size: int
    channels_last: bool
    layers: dict[str, dict[str, Any]]
    seconds_per_mac: float
    other_seconds: float
    full_seconds: float
    macs: float  # of the full model at ``batch_size`` (the table's MACs are per batch of that size)
    device: str = "cpu"
    torch_threads: int = field(default_factory=torch.get_num_threads)

    # ---- building ------------------------------------------------------------------------------------------
    @classmethod
    @torch.inference_mode()
    def measure(cls, model: nn.Module, example_inputs: Any, ratios: tuple[float, ...] = DEFAULT_RATIOS,
                channels_last: bool = True, runs: int = 10, warmup: int = 2) -> "LatencyTable":
        """Time every convolution and linear layer of ``model`` on the inputs it sees for ``example_inputs`` (their
        batch size is the table's), at every pair of width ``ratios`` (deduplicated: identical layers are timed
        once), and the whole model once. Medians of ``runs`` calls after ``warmup``."""
        ratios = _check_ratios(ratios)
        for name, value in (("runs", runs), ("warmup", warmup)):
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "runs" else 0):
                raise ValueError(f"LatencyTable.measure: {name} must be an integer >= {1 if name == 'runs' else 0}, "
                                 f"got {value!r}")
        was_training = model.training
        model.eval()
        inputs = _tabled_input_shapes(model, example_inputs)
        macs, per_module = count_macs(model, example_inputs)
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        timed: dict[tuple, dict[str, Any]] = {}
        layers = {}
        for name, shape in inputs.items():
            module = model.get_submodule(name)
            key = _signature(module, shape)
            if key not in timed:
                timed[key] = _time_layer(module, shape, ratios, channels_last, runs, warmup, device)
            layers[name] = {**timed[key], "in": _in_channels(module), "out": _out_channels(module)}
        full = _median_seconds(model, example_inputs, runs, warmup, channels_last)
        model.train(was_training)
        tabled = sum(entry["grid"][-1][-1] for entry in layers.values())
        tabled_macs = sum(per_module[model.get_submodule(n)] for n in layers)
        seconds_per_mac = tabled / max(tabled_macs, 1.0)
        parts = tabled + max(macs - tabled_macs, 0.0) * seconds_per_mac
        if parts > full:  # timed alone, the layers took longer than inside the model (per-call overhead, cold
            scale = full / parts  # caches): scaled to the whole, so the estimate of this model is its time
            layers = {name: {**entry, "grid": [[s * scale for s in row] for row in entry["grid"]]}
                      for name, entry in layers.items()}
            seconds_per_mac, parts = seconds_per_mac * scale, full
        batch = next(iter(inputs.values()))[0] if inputs else 1
        return cls(batch_size=batch, channels_last=channels_last, layers=layers, seconds_per_mac=seconds_per_mac,
                   other_seconds=full - parts, full_seconds=full, macs=macs, device=str(device))

    # ---- lookups -------------------------------------------------------------------------------------------
    def layer_seconds(self, name: str, in_channels: int, out_channels: int) -> float:
        """Seconds of layer ``name`` at these widths: bilinear between the measured grid points (linear
        extrapolation below the narrowest one, never negative)."""
        entry = self.layers.get(name)
        if entry is None:
            raise KeyError(f"LatencyTable has no layer '{name}' (it was measured on another model?); tabled layers: "
                           f"{sorted(self.layers)[:5]}...")
        grid = entry["grid"]
        if entry.get("depthwise"):
            return max(_interpolate(entry["out_grid"], grid[0], out_channels), 0.0)  # one side: in = out
        rows = [_interpolate(entry["out_grid"], row, out_channels) for row in grid]
        return max(_interpolate(entry["in_grid"], rows, in_channels), 0.0)

    def costs(self, model: nn.Module, layer_macs: dict[nn.Module, float], batch_size: int
              ) -> tuple[float, dict[nn.Module, float]]:
        """Estimated seconds of ``model`` (the measured model or a pruned copy of it: same module names) and of each
        module, for :func:`~hf_metaprune.prune_to_speedup`: tabled layers at their current widths, other MACs at
        ``seconds_per_mac``. ``layer_macs``: :func:`~hf_metaprune.pruning.cost.count_macs`'s per-module MACs of
        ``model`` on inputs of ``batch_size`` (scaled to the table's batch size)."""
        seconds: dict[nn.Module, float] = {}
        tabled_now = tabled_full = 0.0
        per_mac = self.seconds_per_mac * self.batch_size / batch_size
        for name, module in reversed(list(model.named_modules())):  # children before their containers
            if not name or module not in layer_macs:
                continue
            if name in self.layers and is_tabled(module):
                s = self.layer_seconds(name, _in_channels(module), _out_channels(module))
                tabled_now += s
                tabled_full += self.layers[name]["grid"][-1][-1]
            else:
                children = [c for c in module.children() if c in layer_macs]
                own = layer_macs[module] - sum(layer_macs[c] for c in children)
                s = sum(seconds[c] for c in children) + max(own, 0.0) * per_mac
            seconds[module] = s
        top = [m for n, m in model.named_children() if m in seconds]
        total = sum(seconds[m] for m in top)
        share = tabled_now / tabled_full if tabled_full else 1.0
        return total + self.other_seconds * share, seconds

    def estimate(self, model: nn.Module, example_inputs: Any) -> float:
        """Estimated seconds per forward, at the table's batch size, of ``model`` (the measured model or a pruned
        copy of it) run on ``example_inputs`` (any batch size)."""
        _, layer_macs = count_macs(model, example_inputs)
        return self.costs(model, layer_macs, batch_size_of(model, example_inputs))[0]

    # ---- files ---------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the table as JSON (atomic: beside, then renamed)."""
        write_json(path, asdict(self), indent=None)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LatencyTable":
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"LatencyTable.load: no file at {path!r}")
        try:
            with open(path) as f:
                data = json.load(f)
            return cls(**data)
        except (json.JSONDecodeError, TypeError) as e:
            raise ValueError(f"LatencyTable.load: {path!r} is not a saved latency table ({e})") from None


def batch_size_of(model: nn.Module, example_inputs: Any) -> int:
    """The batch size the first tabled layer of ``model`` sees on ``example_inputs``."""
    shapes = _tabled_input_shapes(model, example_inputs)
    return next(iter(shapes.values()))[0] if shapes else 1


@torch.inference_mode()
def _tabled_input_shapes(model: nn.Module, example_inputs: Any) -> dict[str, tuple[int, ...]]:
    """The input shape of every tabled layer (by name, in call order) on one forward of ``example_inputs``."""
    names = {m: n for n, m in model.named_modules()}
    shapes: dict[str, tuple[int, ...]] = {}

    def record(module: nn.Module, args: tuple, _output: Any) -> None:
        shapes.setdefault(names[module], tuple(args[0].shape))

    hooks = [m.register_forward_hook(record) for m in model.modules() if is_tabled(m)]
    try:
        call_model(model, example_inputs)
    finally:
        for h in hooks:
            h.remove()
    return shapes


def _check_ratios(ratios) -> list[float]:
    ratios = sorted(set(ratios)) if isinstance(ratios, (list, tuple)) else None
    if not ratios or not all(isinstance(r, (int, float)) and not isinstance(r, bool) and 0 < r <= 1 for r in ratios) \
            or ratios[-1] != 1.0:
        raise ValueError(f"LatencyTable.measure: ratios must be numbers in (0, 1] including 1.0, got {ratios!r}")
    return [float(r) for r in ratios]


def is_tabled(module: nn.Module) -> bool:
    """Layers the table times: linear layers and ungrouped or depthwise 2-D convolutions."""
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, nn.Conv2d) and module.groups in (1, module.in_channels) and (
        module.groups == 1 or module.out_channels == module.in_channels)


def _is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.groups > 1


def _in_channels(module: nn.Module) -> int:
    return module.in_features if isinstance(module, nn.Linear) else module.in_channels


def _out_channels(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


def _signature(module: nn.Module, shape: tuple[int, ...]) -> tuple:
    if isinstance(module, nn.Linear):
        return ("linear", module.in_features, module.out_features, module.bias is not None, shape)
    return ("conv2d", module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
            module.dilation, module.groups, module.bias is not None, shape)


def _counts(full: int, ratios: list[float]) -> list[int]:
    return sorted({max(1, round(full * r)) for r in ratios})


def _build(module: nn.Module, c_in: int, c_out: int) -> nn.Module:
    if isinstance(module, nn.Linear):
        return nn.Linear(c_in, c_out, bias=module.bias is not None)
    return nn.Conv2d(c_in, c_out, module.kernel_size, module.stride, module.padding, module.dilation,
                     groups=c_in if _is_depthwise(module) else 1, bias=module.bias is not None,
                     padding_mode=module.padding_mode)


def _time_layer(module: nn.Module, shape: tuple[int, ...], ratios: list[float], channels_last: bool, runs: int,
                warmup: int, device: torch.device) -> dict[str, Any]:
    c_in, c_out = _in_channels(module), _out_channels(module)
    depthwise = _is_depthwise(module)
    in_grid = [c_in] if depthwise else _counts(c_in, ratios)
    out_grid = _counts(c_out, ratios)
    grid = []
    for i in in_grid:
        row = []
        for o in out_grid:
            width_in = o if depthwise else i
            layer = _build(module, width_in, o).to(device).eval()
            x = torch.randn(*shape[:-1], width_in, device=device) if isinstance(module, nn.Linear) else \
                torch.randn(shape[0], width_in, *shape[2:], device=device)
            row.append(_median_seconds(layer, x, runs, warmup, channels_last))
        grid.append(row)
    return {"in_grid": in_grid, "out_grid": out_grid, "grid": grid, "depthwise": depthwise}


def _median_seconds(module: nn.Module, x: Any, runs: int, warmup: int, channels_last: bool) -> float:
    """Median seconds of ``module(x)`` (on channels-last copies when asked: the caller's model is untouched)."""
    if channels_last:
        module = copy.deepcopy(module).to(memory_format=torch.channels_last)
        if isinstance(x, torch.Tensor) and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
    times = []
    with torch.inference_mode():
        for i in range(warmup + runs):
            start = time.perf_counter()
            call_model(module, x)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def _interpolate(xs: list[int], ys: list[float], x: float) -> float:
    """Piecewise-linear ``y(x)`` through the points; outside them, the nearest segment extended."""
    if len(xs) == 1:
        return ys[0] * x / xs[0]
    k = min(max(bisect.bisect_left(xs, x), 1), len(xs) - 1)
    x0, x1, y0, y1 = xs[k - 1], xs[k], ys[k - 1], ys[k]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
