"""Pruned 🤗 transformers models that reload with ``from_pretrained``.

transformers v5 has no head pruning, so a config cannot describe a model whose layers have different head counts
or intermediate sizes. For a base class such as ``ViTForImageClassification`` we derive (once, registered with the
Auto classes) a config subclass that also stores the pruned tensor shapes and per-module head counts, and a model
subclass whose ``__init__`` builds the base model and shrinks it to those shapes — so ``save_pretrained`` /
``AutoModelFor...from_pretrained`` / ``push_to_hub`` work like for any other model, with safetensors weights.
"""
from __future__ import annotations

import sys

import torch
from torch import nn
from transformers import (AutoConfig, AutoModel, AutoModelForImageClassification, AutoModelForSequenceClassification,
                          BertForSequenceClassification, BertModel, PreTrainedModel, ViTForImageClassification,
                          ViTModel)

from ..graph.attention import find_attention_modules, sync_head_counts
from .serialization import _shrink_to
from .speedup import module_widths

PRUNED_FIELDS = ("pruned_shapes", "pruned_widths", "pruned_attention_heads")
AUTO_CLASSES = (AutoModel, AutoModelForImageClassification, AutoModelForSequenceClassification)
_PRUNED_CLASSES: dict[type, type] = {}


def pruned_model_class(base_class: type[PreTrainedModel]) -> type[PreTrainedModel]:
    """The registered ``MetaPruned<Base>`` class for ``base_class`` (created on first use)."""
    base_class = getattr(base_class, "_metaprune_base_class", base_class)
    if base_class in _PRUNED_CLASSES:
        return _PRUNED_CLASSES[base_class]
    base_config = base_class.config_class
    model_type = f"metaprune_{base_config.model_type}"
    module = sys.modules[__name__]
    config_class = getattr(module, f"MetaPruned{base_config.__name__}", None)
    if config_class is None:
        config_class = type(f"MetaPruned{base_config.__name__}", (base_config,),
                            {"model_type": model_type, "__module__": __name__})
        setattr(module, config_class.__name__, config_class)  # importable, so instances pickle and deepcopy
        AutoConfig.register(model_type, config_class, exist_ok=True)

    def __init__(self, config, *args, **kwargs):
        base_class.__init__(self, config, *args, **kwargs)
        _shrink_to_config(self, config)

    cls = type(f"MetaPruned{base_class.__name__}", (base_class,),
               {"config_class": config_class, "__init__": __init__, "__module__": __name__,
                "_metaprune_base_class": base_class})
    setattr(module, cls.__name__, cls)
    for auto in AUTO_CLASSES:
        if auto._model_mapping.get(base_config, None) is base_class:
            auto.register(config_class, cls, exist_ok=True)
    _PRUNED_CLASSES[base_class] = cls
    return cls


def attach_pruned_config(model: PreTrainedModel) -> PreTrainedModel:
    """Turn a structurally pruned ``model`` (in place) into its ``MetaPruned`` class with a config that rebuilds it."""
    cls = pruned_model_class(type(model))
    base_class = cls._metaprune_base_class
    fields = {k: v for k, v in model.config.to_dict().items()
              if k not in PRUNED_FIELDS + ("model_type", "architectures", "transformers_version")}
    with torch.device("meta"):  # shapes of the unpruned architecture, without allocating it
        reference = base_class(base_class.config_class(**fields))
    ref_shapes = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    shapes = {k: list(v.shape) for k, v in model.state_dict().items() if tuple(v.shape) != ref_shapes.get(k)}
    changed_modules = {k.rsplit(".", 1)[0] for k in shapes}
    widths = {k: w for k, w in module_widths(model).items() if k in changed_modules}
    heads = sync_head_counts(find_attention_modules(model))
    config = cls.config_class(**fields, pruned_shapes=shapes, pruned_widths=widths, pruned_attention_heads=heads)
    config.architectures = [cls.__name__]
    old = model.config
    config._attn_implementation = old._attn_implementation  # not part of to_dict(): keep the same kernels
    for m in model.modules():  # attention modules keep a reference to the config (attention implementation)
        if getattr(m, "config", None) is old:
            m.config = config
    model.__class__ = cls
    return model


def _shrink_to_config(model: nn.Module, config) -> None:
    shapes = getattr(config, "pruned_shapes", None) or {}
    if not shapes:
        return
    state = {k: torch.empty(v, device="meta") for k, v in shapes.items()}
    with torch.device("cpu"):  # from_pretrained builds under a meta default device; Torch-Pruning's index tensors
        _shrink_to(model, config.pruned_widths or {}, state)  # must not be created there
    heads = config.pruned_attention_heads or {}
    for a in find_attention_modules(model):
        if a.path in heads and a.num_heads != heads[a.path]:
            raise ValueError(f"config says {heads[a.path]} heads for '{a.path}', its projections hold {a.num_heads}")
    sync_head_counts(find_attention_modules(model))
    missing = set(heads) - {a.path for a in find_attention_modules(model)}
    if missing:
        raise ValueError(f"config lists head counts for modules the model does not have: {sorted(missing)}")


for _base in (ViTModel, ViTForImageClassification, BertModel, BertForSequenceClassification):
    pruned_model_class(_base)  # so that a saved pruned model's config.json resolves in a fresh process
