"""Save and reload pruned CNNs without pickle: safetensors weights + a JSON width specification.

Like timm's pruned-model support, a pruned network is rebuilt from its base architecture and per-layer
widths; the layers are shrunk with Torch-Pruning's own per-layer pruning functions, then the weights are
loaded strictly.
"""
from __future__ import annotations

import json
import os
from typing import Any

import timm
import torch
import torch_pruning as tp
from safetensors.torch import load_file, save_file
from torch import nn

from .speedup import module_widths

CONFIG_NAME = "pruned_config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1


def architecture_of(model: nn.Module) -> str | None:
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    return cfg.get("architecture")


def save_pruned(model: nn.Module, save_directory: str | os.PathLike, architecture: str | None = None,
                model_kwargs: dict[str, Any] | None = None) -> None:
    """Write ``model.safetensors`` and ``pruned_config.json`` (base timm architecture + per-layer widths)."""
    architecture = architecture or architecture_of(model)
    if architecture is None:
        raise ValueError("cannot tell the model's timm architecture; pass architecture='resnet50' (or the name "
                         "it was created with via timm.create_model)")
    kwargs = {"num_classes": getattr(model, "num_classes", None)}
    kwargs.update(model_kwargs or {})
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    os.makedirs(save_directory, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(save_directory, WEIGHTS_NAME), metadata={"format": "pt"})
    spec = {"format_version": FORMAT_VERSION, "library": "timm", "architecture": architecture,
            "model_kwargs": kwargs, "widths": module_widths(model)}
    with open(os.path.join(save_directory, CONFIG_NAME), "w") as f:
        json.dump(spec, f, indent=2)


def load_pruned(directory: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model saved with :func:`save_pruned` (no pickle is ever loaded)."""
    config_path, weights_path = os.path.join(directory, CONFIG_NAME), os.path.join(directory, WEIGHTS_NAME)
    for path in (config_path, weights_path):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} not found: '{directory}' is not a folder written by save_pruned")
    try:
        with open(config_path) as f:
            spec = json.load(f)
        architecture, widths = spec["architecture"], spec["widths"]
    except (json.JSONDecodeError, KeyError) as e:
        raise ValueError(f"{config_path} is not a valid pruned-model config: {e}") from e
    try:
        state = load_file(weights_path, device=str(device))
    except Exception as e:  # safetensors raises its own error types for truncated or corrupt files
        raise ValueError(f"{weights_path} is not a readable safetensors file: {e}") from e
    return rebuild_pruned(architecture, spec.get("model_kwargs", {}), widths, state,
                          source=f"{weights_path} (described by {CONFIG_NAME})").to(device).eval()


def rebuild_pruned(architecture: str, model_kwargs: dict[str, Any], widths: dict[str, dict[str, int]],
                   state: dict[str, torch.Tensor], source: str = "the checkpoint") -> nn.Module:
    """Create the timm ``architecture``, shrink its layers to ``widths`` and load ``state`` strictly."""
    try:
        model = timm.create_model(architecture, pretrained=False, **model_kwargs)
    except RuntimeError as e:  # timm: "Unknown model"
        raise ValueError(f"{source}: unknown architecture '{architecture}': {e}") from e
    _shrink_to(model, widths, state)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"weights in {source} do not match the pruned {architecture} it declares: {e}") from e
    return model


def _shrink_to(model: nn.Module, widths: dict[str, dict[str, int]], state: dict[str, torch.Tensor]) -> None:
    for name, m in model.named_modules():
        own = dict(m.named_parameters(recurse=False)) | dict(m.named_buffers(recurse=False))
        targets = {n: state.get(f"{name}.{n}" if name else n) for n in own}
        if all(t is None or tuple(t.shape) == tuple(own[n].shape) for n, t in targets.items() if own[n] is not None):
            continue
        pruner = tp.pruner.function.PrunerBox.get(tp.ops.module2type(m))
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
            w = widths.get(name)
            if w is None:
                raise ValueError(f"pruned config has no width for layer '{name}'")
            _shrink(pruner.prune_out_channels, m, pruner.get_out_channels(m), w["out"])
            if tp.ops.module2type(m) != tp.ops.OPTYPE.DEPTHWISE_CONV:
                _shrink(pruner.prune_in_channels, m, pruner.get_in_channels(m), w["in"])
        elif pruner is not None:
            # channels are the last dimension: norms' 1-D tensors, an embedding's columns
            size = next(t.shape[-1] for n, t in targets.items() if t is not None and t.dim() > 0)
            _shrink(pruner.prune_out_channels, m, pruner.get_out_channels(m), size)
        else:
            for n, t in targets.items():  # loose 1-D parameters such as layer-scale gammas
                if t is not None and tuple(t.shape) != tuple(own[n].shape):
                    setattr(m, n, nn.Parameter(own[n].detach().new_empty(t.shape)))


def _shrink(prune_fn, module: nn.Module, current: int, wanted: int) -> None:
    if wanted > current:
        raise ValueError(f"pruned width {wanted} exceeds the base width {current} of {type(module).__name__}")
    if wanted < current:
        prune_fn(module, list(range(wanted, current)))
