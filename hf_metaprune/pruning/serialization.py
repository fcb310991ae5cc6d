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
from safetensors.torch import load_file, save_file
from torch import nn

from .._io import PRUNED_CONFIG_NAME, atomic_files
from ..graph.attention import find_attention_modules, sync_head_counts
from .shapes import freeze, frozen_parameters, shrink_to_shapes
from .speedup import module_widths

CONFIG_NAME = PRUNED_CONFIG_NAME
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1


def architecture_of(model: nn.Module) -> str | None:
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    return cfg.get("architecture")


# Files that mark a folder as holding another kind of checkpoint, which save_pruned must not overwrite.
FOREIGN_MARKERS = {
    "config.json": "a 🤗 transformers / MetaPrunerModel checkpoint (config.json)",
    "pytorch_model.bin": "a 🤗 transformers checkpoint (pytorch_model.bin)",
    "model.safetensors.index.json": "a sharded 🤗 transformers checkpoint (model.safetensors.index.json)",
    "adapter_config.json": "a PEFT adapter (adapter_config.json)",
    "dataset_info.json": "a 🤗 datasets folder such as a data-model zoo (dataset_info.json)",
    "dataset_dict.json": "a 🤗 datasets DatasetDict folder (dataset_dict.json)",
}


def save_pruned(model: nn.Module, save_directory: str | os.PathLike, architecture: str | None = None,
                model_kwargs: dict[str, Any] | None = None) -> None:
    """Write ``model.safetensors`` and ``pruned_config.json`` (base timm architecture + per-layer widths).

    Everything is validated before anything is written, and both files are written beside their final names and
    renamed only once both are complete: a failed save leaves an earlier checkpoint in ``save_directory`` loadable.
    Re-saving over an earlier ``save_pruned`` checkpoint replaces it; a folder holding another kind of checkpoint
    (a 🤗 ``config.json``, a ``model.safetensors`` without ``pruned_config.json``, a dataset) raises
    ``FileExistsError`` and is left untouched.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"save_pruned: model must be a torch.nn.Module, got {type(model).__name__}")
    architecture = architecture or architecture_of(model)
    if architecture is None:
        raise ValueError("cannot tell the model's timm architecture; pass architecture='resnet50' (or the name "
                         "it was created with via timm.create_model)")
    if not isinstance(architecture, str):
        raise TypeError(f"save_pruned: architecture must be a timm model name (str), got {type(architecture).__name__}")
    if model_kwargs is not None and not isinstance(model_kwargs, dict):
        raise TypeError(f"save_pruned: model_kwargs must be a dict of timm.create_model keyword arguments, got "
                        f"{type(model_kwargs).__name__}")
    kwargs = {"num_classes": getattr(model, "num_classes", None)}
    kwargs.update(model_kwargs or {})
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    for key, value in kwargs.items():
        if not isinstance(key, str):
            raise TypeError(f"save_pruned: model_kwargs keys must be str (keyword argument names), got {key!r}")
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise TypeError(f"save_pruned: model_kwargs['{key}'] = {value!r} ({type(value).__name__}) is not "
                            f"JSON-serialisable, so it cannot be stored in {CONFIG_NAME}; pass plain numbers, strings, "
                            f"bools, lists or dicts ({e})") from e
    spec = {"format_version": FORMAT_VERSION, "library": "timm", "architecture": architecture,
            "model_kwargs": kwargs, "widths": module_widths(model), "frozen_parameters": frozen_parameters(model)}
    config_text = json.dumps(spec, indent=2)  # fails here, before any file is touched
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    _check_save_directory(save_directory)
    with atomic_files(save_directory, [WEIGHTS_NAME, CONFIG_NAME]) as tmp:
        try:
            save_file(state, tmp[WEIGHTS_NAME], metadata={"format": "pt"})
        except (RuntimeError, ValueError) as e:  # e.g. tensors sharing memory, which safetensors refuses
            raise ValueError(f"save_pruned: the state dict of {type(model).__name__} cannot be written as "
                             f"safetensors: {e}") from e
        with open(tmp[CONFIG_NAME], "w") as f:
            f.write(config_text)


def _check_save_directory(save_directory: str | os.PathLike) -> None:
    """Refuse a path that is a file, or a folder whose checkpoint save_pruned would overwrite."""
    path = os.fspath(save_directory)
    if os.path.exists(path) and not os.path.isdir(path):
        raise NotADirectoryError(f"save_pruned: save_directory '{path}' is a file; expected a folder (it is created "
                                 "if missing)")
    if not os.path.isdir(path):
        return
    names = set(os.listdir(path))
    found = [what for name, what in FOREIGN_MARKERS.items() if name in names]
    if WEIGHTS_NAME in names and CONFIG_NAME not in names:
        found.append(f"a {WEIGHTS_NAME} that save_pruned did not write (no {CONFIG_NAME} beside it)")
    if found:
        raise FileExistsError(f"save_pruned: '{path}' already holds {', and '.join(found)}; saving here would "
                              f"overwrite its {WEIGHTS_NAME}. Choose an empty folder (or one written by save_pruned, "
                              "which is updated in place).")


def resolve_device(device: str | torch.device | int, argument: str = "device") -> torch.device:
    """``device`` as a ``torch.device`` that exists on this machine, else ``ValueError`` naming ``argument``."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"{argument}={device!r} is not a valid torch device: expected e.g. 'cpu', 'cuda', "
                         f"'cuda:1' or 'mps' ({e})") from e
    if dev.type == "cpu":
        return dev
    if dev.type == "meta":
        raise ValueError(f"{argument}={device!r}: loading weights onto the meta device would drop them; pass 'cpu' "
                         "or an accelerator")
    backend = getattr(torch, dev.type, None)
    if dev.type == "mps":
        backend = getattr(torch.backends, "mps", None)
    available = getattr(backend, "is_available", None)
    if available is None or not available():
        raise ValueError(f"{argument}={device!r}: no {dev.type} device is available on this machine "
                         f"(torch.{dev.type}.is_available() is False); pass {argument}='cpu'")
    count = getattr(backend, "device_count", None)
    if dev.index is not None and count is not None and dev.index >= count():
        raise ValueError(f"{argument}={device!r}: this machine has {count()} {dev.type} device(s) "
                         f"(indices 0..{count() - 1})")
    return dev


def load_pruned(directory: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model saved with :func:`save_pruned` (no pickle is ever loaded).

    ``device`` is checked first: an unknown or unavailable device raises ``ValueError`` naming it.
    """
    device = resolve_device(device)
    config_path, weights_path = os.path.join(directory, CONFIG_NAME), os.path.join(directory, WEIGHTS_NAME)
    for path in (config_path, weights_path):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} not found: '{directory}' is not a folder written by save_pruned")
    try:
        with open(config_path) as f:
            spec = json.load(f)
        architecture, widths = spec["architecture"], spec["widths"]
        model_kwargs = spec.get("model_kwargs", {})
        if not isinstance(architecture, str) or not isinstance(widths, dict) or not isinstance(model_kwargs, dict):
            raise ValueError("'architecture' must be a string, 'widths' and 'model_kwargs' objects")
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{config_path} is not a valid pruned-model config: {e}") from e
    try:
        state = load_file(weights_path, device="cpu")
    except Exception as e:  # safetensors raises its own error types for truncated or corrupt files
        raise ValueError(f"{weights_path} is not a readable safetensors file: {e}") from e
    model = rebuild_pruned(architecture, model_kwargs, widths, state,
                           source=f"{weights_path} (described by {CONFIG_NAME})")
    freeze(model, spec.get("frozen_parameters", []), config_path)
    return model.to(device).eval()


def rebuild_pruned(architecture: str, model_kwargs: dict[str, Any], widths: dict[str, dict[str, int]],
                   state: dict[str, torch.Tensor], source: str = "the checkpoint") -> nn.Module:
    """Create the timm ``architecture``, shrink its layers to ``widths`` and load ``state`` strictly."""
    try:
        model = timm.create_model(architecture, pretrained=False, **model_kwargs)
    except RuntimeError as e:  # timm: "Unknown model"
        raise ValueError(f"{source}: unknown architecture '{architecture}': {e}") from e
    except TypeError as e:  # a keyword the architecture does not take
        raise ValueError(f"{source}: model_kwargs {model_kwargs} do not fit timm's '{architecture}': {e}") from e
    own = model.state_dict()
    shapes = {}
    for key, value in state.items():
        if key in own and tuple(value.shape) != tuple(own[key].shape):
            if value.dim() != own[key].dim() or any(a > b for a, b in zip(value.shape, own[key].shape)):
                raise ValueError(f"{source}: '{key}' has shape {tuple(value.shape)}, which is not a pruned "
                                 f"{tuple(own[key].shape)} of the {architecture} it declares")
            shapes[key] = tuple(value.shape)
    attention = find_attention_modules(model)  # found at full width; head sizes never change
    shrink_to_shapes(model, shapes, {})
    sync_head_counts(attention)  # head counts from the shrunk projections (timm ViT: num_heads, attn_dim)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"weights in {source} do not match the pruned {architecture} it declares: {e}") from e
    actual = module_widths(model)
    wrong = [name for name in sorted(set(actual) | set(widths)) if actual.get(name) != widths.get(name)]
    if wrong:
        raise ValueError(f"{source}: the weights do not match the per-layer widths of the pruned {architecture} it "
                         f"declares: '{wrong[0]}' is {actual.get(wrong[0])} in the weights but {widths.get(wrong[0])} "
                         f"in the widths ({len(wrong)} layer(s) differ)")
    return model
