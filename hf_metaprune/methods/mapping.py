"""The registry of pruning methods, in the spirit of peft's ``mapping.py``: a method is a name bound to its config
class, its model class and (when it learns) its trainer and training arguments.

Registering also tells transformers' ``AutoConfig`` / ``AutoModel`` about the method's ``model_type``, so a saved
checkpoint of any method reloads with ``AutoModel.from_pretrained`` once ``hf_metaprune`` is imported.
"""
from __future__ import annotations

from dataclasses import dataclass

from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel, Trainer, TrainingArguments


@dataclass(frozen=True)
class PruningMethod:
    name: str
    config_class: type[PretrainedConfig]
    model_class: type[PreTrainedModel]
    trainer_class: type[Trainer] | None = None
    training_arguments_class: type[TrainingArguments] | None = None


METHODS: dict[str, PruningMethod] = {}


def register_method(name: str, config_class: type[PretrainedConfig], model_class: type[PreTrainedModel],
                    trainer_class: type[Trainer] | None = None,
                    training_arguments_class: type[TrainingArguments] | None = None) -> PruningMethod:
    """Bind ``name`` to a method's classes and register its ``model_type`` with the Auto classes."""
    model_type = getattr(config_class, "model_type", "")
    if not model_type:
        raise ValueError(f"register_method('{name}'): {config_class.__name__}.model_type is empty; the Auto classes "
                         "need it to find the method from a saved config.json")
    if name in METHODS and METHODS[name].model_class is not model_class:
        raise ValueError(f"register_method: the name '{name}' is already taken by "
                         f"{METHODS[name].model_class.__name__}")
    method = PruningMethod(name, config_class, model_class, trainer_class, training_arguments_class)
    METHODS[name] = method
    AutoConfig.register(model_type, config_class, exist_ok=True)
    AutoModel.register(config_class, model_class, exist_ok=True)
    return method


def get_method(name: str) -> PruningMethod:
    """The registered method called ``name`` (an error lists the registered names)."""
    if not isinstance(name, str) or name not in METHODS:
        raise ValueError(f"unknown pruning method {name!r}; registered methods: {sorted(METHODS)}")
    return METHODS[name]
