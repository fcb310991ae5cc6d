"""Shrink a freshly built model to a pruned model's recorded tensor shapes, with plain PyTorch.

This module imports nothing but torch: besides rebuilding pruned 🤗 models inside hf_metaprune, its source is
written next to a saved pruned model as the ``trust_remote_code`` modeling file, so the model loads where
hf_metaprune is not installed.
"""
from __future__ import annotations

import torch
from torch import nn

HEAD_COUNT_ATTRS = ("num_attention_heads", "num_heads", "n_heads")
HEAD_SIZE_ATTRS = ("head_dim", "attention_head_size")
HEAD_TOTAL_ATTRS = ("all_head_size", "attn_dim")
KEY_NAMES = ("k_proj", "key", "k_lin")


def shrink_to_shapes(model: nn.Module, shapes: dict, head_counts: dict) -> None:
    """Replace every tensor named in ``shapes`` by an (uninitialised) one of the recorded shape, update the
    modules' size attributes, and set the attention modules' head counts; the weights are loaded afterwards."""
    for key, shape in shapes.items():
        path, _, name = key.rpartition(".")
        module = model.get_submodule(path)
        old = getattr(module, name)
        new = torch.empty(shape, dtype=old.dtype, device=old.device)
        if isinstance(old, nn.Parameter):
            setattr(module, name, nn.Parameter(new, requires_grad=old.requires_grad))
        else:
            module.register_buffer(name, new, persistent=name not in module._non_persistent_buffers_set)
    for m in model.modules():
        w = getattr(m, "weight", None)
        if isinstance(m, nn.Linear):
            m.out_features, m.in_features = w.shape
        elif isinstance(m, nn.modules.conv._ConvNd):
            if m.groups > 1 and m.groups == m.out_channels == m.in_channels and w.shape[0] != m.out_channels:
                m.groups = w.shape[0]  # depthwise stays depthwise: one group per remaining channel
            m.out_channels, m.in_channels = w.shape[0], w.shape[1] * m.groups
        elif isinstance(m, nn.Embedding):
            m.num_embeddings, m.embedding_dim = w.shape
        elif isinstance(m, nn.LayerNorm) and w is not None:
            m.normalized_shape = (w.shape[0],)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.num_features = m.running_mean.shape[0] if m.running_mean is not None else w.shape[0]
    for path, heads in head_counts.items():
        m = model.get_submodule(path)
        for attr in HEAD_COUNT_ATTRS:
            if hasattr(m, attr):
                setattr(m, attr, heads)
        head_dim = next((getattr(m, a) for a in HEAD_SIZE_ATTRS if isinstance(getattr(m, a, None), int)), None)
        if head_dim is None:  # a module keeping only its head count: nothing else to set
            continue
        for attr in HEAD_TOTAL_ATTRS:
            if hasattr(m, attr):
                setattr(m, attr, heads * head_dim)
        key = next((getattr(m, n) for n in KEY_NAMES if isinstance(getattr(m, n, None), nn.Linear)), None)
        if hasattr(m, "num_key_value_groups") and key is not None:  # decoders: query heads per key/value head
            m.num_key_value_groups = heads // (key.out_features // head_dim)


def frozen_parameters(model: nn.Module) -> list[str]:
    """Names of the parameters that do not require gradients (a frozen backbone): saved with the weights."""
    return [n for n, p in model.named_parameters() if not p.requires_grad]


def freeze(model: nn.Module, names: list[str], source: str) -> None:
    """Set ``requires_grad=False`` on the parameters ``names`` (as :func:`frozen_parameters` recorded them)."""
    params = dict(model.named_parameters())
    unknown = [n for n in names if n not in params] if isinstance(names, list) else names
    if unknown:
        raise ValueError(f"{source}: frozen_parameters must list parameters of the model, got {unknown!r}")
    for n in names:
        params[n].requires_grad_(False)
