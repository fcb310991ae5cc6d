"""Pruned 🤗 transformers models that reload with ``from_pretrained``.

transformers v5 has no head pruning, so a config cannot describe a model whose layers have different head counts
or intermediate sizes. For a base class such as ``ViTForImageClassification`` we derive (once, registered with the
Auto classes) a config subclass that also stores the pruned tensor shapes and per-module head counts, and a model
subclass whose ``__init__`` builds the base model and shrinks it to those shapes — so ``save_pretrained`` /
``AutoModelFor...from_pretrained`` / ``push_to_hub`` work like for any other model, with safetensors weights.
``save_pretrained`` also writes the same classes as ``modeling_metaprune.py`` with an ``auto_map``, so the folder
(or Hub repo) loads with ``trust_remote_code=True`` where hf_metaprune is not installed.
"""
from __future__ import annotations

import inspect
import os
import sys
import threading

import torch
from safetensors import SafetensorError
from torch import nn
from transformers import AutoConfig, PreTrainedModel
from transformers.models.auto.configuration_auto import CONFIG_MAPPING, CONFIG_MAPPING_NAMES

from .._io import PRUNED_CONFIG_NAME, atomic_update, check_loading_info, remove_stale_weights
from ..graph.attention import find_attention_modules, sync_head_counts
from . import shapes as shapes_module
from .shapes import freeze, frozen_parameters, shrink_to_shapes

PRUNED_FIELDS = ("pruned_shapes", "pruned_attention_heads", "pruned_key_value_heads", "frozen_parameters",
                 "auto_map")
REMOTE_CODE_FILE = "modeling_metaprune.py"
HUB_KWARGS = ("repo_id", "commit_message", "commit_description", "private", "token", "revision", "create_pr", "tags")
_PRUNED_CLASSES: dict[type, type] = {}
_BUILDING = threading.local()


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
        outermost = not getattr(_BUILDING, "active", False)
        _BUILDING.active = True  # a generic head (LlamaForSequenceClassification) builds its backbone through
        try:  # AutoModel.from_config, i.e. as a MetaPruned model too: only the outermost one shrinks (its shapes)
            base_class.__init__(self, config, *args, **kwargs)
        finally:
            _BUILDING.active = not outermost
        if outermost:
            _shrink_to_config(self, config)

    autos = [auto for auto, members in _auto_mappings(base_config) if base_class in members]

    def save_pretrained(self, save_directory, *args, is_main_process: bool = True, push_to_hub: bool = False,
                        **kwargs):
        """As usual, plus ``modeling_metaprune.py`` and an ``auto_map`` for ``trust_remote_code`` loading.

        All files are written to a temporary folder inside ``save_directory`` and moved in only once complete, so
        a failed save leaves an earlier checkpoint there loadable; other files in the folder (a tokenizer) stay.
        A folder holding a :func:`hf_metaprune.save_pruned` checkpoint raises ``FileExistsError``.
        """
        path = os.fspath(save_directory)
        if os.path.exists(path) and not os.path.isdir(path):
            raise NotADirectoryError(f"{type(self).__name__}.save_pretrained: save_directory '{path}' is a file; "
                                     "expected a folder")
        if os.path.isfile(os.path.join(path, PRUNED_CONFIG_NAME)):
            raise FileExistsError(f"{type(self).__name__}.save_pretrained: '{path}' holds a save_pruned checkpoint "
                                  f"({PRUNED_CONFIG_NAME}); saving here would overwrite its model.safetensors. Choose "
                                  "another folder.")
        remote = REMOTE_CODE_FILE.removesuffix(".py")
        self.config.frozen_parameters = frozen_parameters(self)  # requires_grad survives the reload
        self.config.auto_map = {"AutoConfig": f"{remote}.{config_class.__name__}",
                                **{a.__name__: f"{remote}.{type(self).__name__}" for a in autos}}
        backbone = next((m[0] for a, m in _auto_mappings(base_config) if a.__name__ == "AutoModel" and m), None)
        code = _remote_code(base_config, base_class, config_class.__name__, type(self).__name__, model_type, backbone)
        hub = {k: kwargs.pop(k) for k in HUB_KWARGS if k in kwargs} if push_to_hub else {}
        with atomic_update(path) as tmp:
            base_class.save_pretrained(self, tmp, *args, is_main_process=is_main_process, **kwargs)
            written = set(os.listdir(tmp))
            if written:  # not on the other processes of a distributed run
                with open(os.path.join(tmp, REMOTE_CODE_FILE), "w") as f:
                    f.write(code)
        if written:
            remove_stale_weights(path, written)
        if push_to_hub and written:  # uploads a fresh save of the same files, modeling_metaprune.py included
            repo_id = hub.pop("repo_id", os.path.basename(os.path.abspath(path)))
            return self.push_to_hub(repo_id, **hub)

    @classmethod
    def from_pretrained(klass, *args, **kwargs):
        """Like ``PreTrainedModel.from_pretrained``, but a checkpoint whose weights do not all fit is an error.

        transformers re-initialises missing (or mismatched) weights and drops unexpected ones with a warning; for
        a pruned model that is a silently different network, so ``ValueError`` is raised instead (tied weights,
        which transformers re-ties and does not report, pass).
        """
        want_info = kwargs.pop("output_loading_info", False)
        kwargs["ignore_mismatched_sizes"] = True  # report mismatches in the loading info; refused below
        source = args[0] if args else kwargs.get("pretrained_model_name_or_path")
        try:
            model, info = super(cls, klass).from_pretrained(*args, output_loading_info=True, **kwargs)
        except SafetensorError as e:  # truncated or corrupt weights file
            raise ValueError(f"{klass.__name__}.from_pretrained: the weights in {source} are not a readable "
                             f"safetensors file: {e}") from e
        check_loading_info(info, klass.__name__, source)
        freeze(model, getattr(model.config, "frozen_parameters", None) or [], f"the config in {source}")
        return (model, info) if want_info else model

    cls = type(f"MetaPruned{base_class.__name__}", (base_class,),
               {"config_class": config_class, "__init__": __init__, "save_pretrained": save_pretrained,
                "from_pretrained": from_pretrained, "__module__": __name__, "_metaprune_base_class": base_class})
    setattr(module, cls.__name__, cls)
    _PRUNED_CLASSES[base_class] = cls
    for auto, members in _auto_mappings(base_config):
        if base_class in members:  # an Auto class mapping to several classes (DeiT) gets them all, pruned
            pruned = tuple(pruned_model_class(m) for m in members)
            auto.register(config_class, pruned if len(pruned) > 1 else pruned[0], exist_ok=True)
    for _, members in _auto_mappings(base_config):  # and every other head and the backbone of this config: a
        for member in members:  # generic head builds its backbone through AutoModel.from_config(pruned config)
            pruned_model_class(member)
    return cls


def _auto_mappings(base_config: type) -> list[tuple[type, tuple[type, ...]]]:
    """Every ``AutoModel…`` class of transformers whose mapping holds ``base_config``, with the classes it maps to
    (a tuple where several heads share the config, as DeiT's classifier with and without teacher)."""
    from transformers.models.auto import modeling_auto

    found = []
    for name in dir(modeling_auto):
        auto = getattr(modeling_auto, name)
        if not (name.startswith("AutoModel") and isinstance(getattr(auto, "_model_mapping", None), dict)):
            continue
        try:
            value = auto._model_mapping[base_config]
        except (KeyError, AttributeError, ImportError, ValueError):
            continue
        members = tuple(value) if isinstance(value, (list, tuple)) else (value,)
        found.append((auto, tuple(m for m in members if isinstance(m, type))))
    return found


class _PrunedConfigsOnDemand(dict):
    """Stands in for ``CONFIG_MAPPING``'s registered configs: the first lookup of a ``metaprune_<type>`` creates the
    pruned classes of every model class the Auto classes map ``<type>`` to, so a folder saved by any pruned 🤗 model
    reloads with ``AutoConfig`` / ``AutoModelFor….from_pretrained`` in a new process after ``import hf_metaprune``,
    without ``trust_remote_code``."""

    def __contains__(self, key: object) -> bool:
        if not dict.__contains__(self, key) and isinstance(key, str) and key.startswith("metaprune_"):
            base_type = key.removeprefix("metaprune_")
            if base_type in CONFIG_MAPPING_NAMES:  # one pruned class registers every other of its config
                member = next((m for _, members in _auto_mappings(CONFIG_MAPPING[base_type]) for m in members), None)
                if member is not None:
                    pruned_model_class(member)
        return dict.__contains__(self, key)


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
    attention = find_attention_modules(model)
    heads = sync_head_counts(attention)
    kv_heads = {a.path: a.num_key_value_heads for a in attention if a.causal}  # decoders: per layer
    config = cls.config_class(**fields, pruned_shapes=shapes, pruned_attention_heads=heads,
                              **({"pruned_key_value_heads": kv_heads} if kv_heads else {}))
    config.architectures = [cls.__name__]
    old = model.config
    config._attn_implementation = old._attn_implementation  # not part of to_dict(): keep the same kernels
    for m in model.modules():  # attention modules keep a reference to the config (attention implementation)
        if getattr(m, "config", None) is old:
            m.config = config
    model.__class__ = cls
    return model


def _shrink_to_config(model: nn.Module, config) -> None:
    shapes, heads = getattr(config, "pruned_shapes", None) or {}, getattr(config, "pruned_attention_heads", None) or {}
    if not shapes:
        return
    try:
        shrink_to_shapes(model, shapes, heads)
    except (AttributeError, StopIteration) as e:
        raise ValueError(f"the pruned config does not fit {type(model).__name__}: {e}") from e
    kv_heads = getattr(config, "pruned_key_value_heads", None) or {}
    for a in find_attention_modules(model):
        if a.num_heads != heads.get(a.path, a.num_heads):
            raise ValueError(f"config says {heads[a.path]} heads for '{a.path}', its projections hold {a.num_heads}")
        if a.causal and a.num_key_value_heads != kv_heads.get(a.path, a.num_key_value_heads):
            raise ValueError(f"config says {kv_heads[a.path]} key/value heads for '{a.path}', its projections hold "
                             f"{a.num_key_value_heads}")


def _remote_code(base_config: type, base_class: type, config_name: str, class_name: str, model_type: str,
                 backbone: type | None = None) -> str:
    """``modeling_metaprune.py``: the shrinking code (plain torch) and the two classes, for trust_remote_code; the
    config's ``AutoModel`` is registered too where transformers has one (``backbone``): generic heads such as
    ``LlamaForSequenceClassification`` build their backbone through ``AutoModel.from_config``."""
    register = "" if backbone is None or backbone is base_class else f"""

class _Backbone({backbone.__name__}):  # built unshrunk inside the head, which shrinks as a whole
    config_class = {config_name}


AutoModel.register({config_name}, _Backbone, exist_ok=True)"""
    imports = ", ".join(dict.fromkeys(c.__name__ for c in (base_config, base_class, backbone) if c is not None))
    return f"""{inspect.getsource(shapes_module)}

from transformers import AutoModel, {imports}  # noqa: E402


class {config_name}({base_config.__name__}):
    model_type = "{model_type}"
{register}


class {class_name}({base_class.__name__}):
    config_class = {config_name}

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        shrink_to_shapes(self, config.pruned_shapes or {{}}, config.pruned_attention_heads or {{}})

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        # a checkpoint whose weights do not all fit is an error, not re-initialised weights and a warning
        want_info = kwargs.pop("output_loading_info", False)
        kwargs["ignore_mismatched_sizes"] = True
        model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        problems = {{k: sorted(map(str, v))[:5] for k, v in info.items() if v and k in
                    ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")}}
        if problems:
            raise ValueError(f"the checkpoint does not match the {{cls.__name__}} its config describes: {{problems}}")
        freeze(model, getattr(model.config, "frozen_parameters", None) or [], "the config")
        return (model, info) if want_info else model
"""


CONFIG_MAPPING._extra_content = _PrunedConfigsOnDemand(CONFIG_MAPPING._extra_content)
