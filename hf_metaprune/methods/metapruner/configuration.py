"""Configuration of the graph metanetwork."""
from __future__ import annotations

import json
import math
import numbers
import os
import re
from typing import Any, Callable

from transformers import PretrainedConfig

from ..._io import looks_like_local_path, missing_local_path

from ...graph.kinds import DEFAULT_EDGE_KINDS, EMBEDDING_EDGE_KIND, NODE_KINDS, edge_kind_size

# PyG aggregations that take no constructor arguments (``MessagePassing(aggr=name)``).
AGGREGATIONS = ("sum", "add", "mean", "max", "min", "mul", "var", "std", "median", "softmax", "powermean")
# Fields that fix the metanetwork's weights and results: a saved config.json must state them (a MetaPrunerConfig
# always writes every field), else the checkpoint would silently be read with the defaults.
REQUIRED_FIELDS = ("hidden_size", "num_layers", "aggregations", "residual_scale", "edge_kinds", "node_kinds")


def _where(name: str) -> str:
    return f"MetaPrunerConfig: '{name}'"


def _int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{_where(name)} must be an int >= {minimum}, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{_where(name)} must be an int >= {minimum}, got {value}")
    return int(value)


def _real(name: str, value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{_where(name)} must be {what}, got {value!r} ({type(value).__name__})")
    return float(value)


def _strings(name: str, value: Any, allowed: Callable[[str], str | None], allow_empty: bool) -> list[str]:
    """A list of distinct strings; ``allowed(s)`` returns why ``s`` is not allowed (or None)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise TypeError(f"{_where(name)} must be a list of str, got {value!r} ({type(value).__name__})")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise TypeError(f"{_where(name)}[{i}] must be a str, got {item!r} ({type(item).__name__})")
        problem = allowed(item)
        if problem:
            raise ValueError(f"{_where(name)}[{i}] = {item!r}: {problem}")
    if not value and not allow_empty:
        raise ValueError(f"{_where(name)} must not be empty")
    duplicates = sorted({s for s in value if list(value).count(s) > 1})
    if duplicates:
        raise ValueError(f"{_where(name)} lists {duplicates} more than once")
    return list(value)


_EDGE_KIND = re.compile(r"[1-9]\d*(x[1-9]\d*)*|k[1-9]\d*|flat[1-9]\d*|" + re.escape(EMBEDDING_EDGE_KIND))


def _edge_kind_problem(kind: str) -> str | None:
    if not _EDGE_KIND.fullmatch(kind) or edge_kind_size(kind) < 1:
        return ("not an edge kind; expected a kernel shape such as '3x3' or '1x1', 'k5' (1-D), 'flatK' (a linear "
                "layer reading K positions per channel) or 'embedding'")
    return None


def _optional_str(name: str, value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{_where(name)} must be a str or None, got {value!r} ({type(value).__name__})")
    return value


def _check_hidden_size(v):
    return _int("hidden_size", v, 1)


def _check_num_layers(v):
    return _int("num_layers", v, 0)


def _check_edge_chunk_size(v):
    return _int("edge_chunk_size", v, 1)


def _check_aggregations(v):
    return _strings("aggregations", v, lambda s: None if s in AGGREGATIONS else f"expected one of {list(AGGREGATIONS)}",
                    allow_empty=False)


def _check_edge_kinds(v):
    return _strings("edge_kinds", v, _edge_kind_problem, allow_empty=False)


def _check_node_kinds(v):
    return _strings("node_kinds", v, lambda s: None if s in NODE_KINDS else f"expected one of {sorted(NODE_KINDS)}",
                    allow_empty=True)


def _check_residual_scale(v):
    what = "a finite float >= 0 (the step size ε)"
    v = _real("residual_scale", v, what)
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{_where('residual_scale')} must be {what}, got {v}")
    return v


def _check_init_identity(v):
    if not isinstance(v, bool):
        raise TypeError(f"{_where('init_identity')} must be a bool, got {v!r} ({type(v).__name__})")
    return v


def _check_criterion(v):
    if not isinstance(v, str) or not v:
        raise TypeError(f"{_where('criterion')} must be a non-empty str (a pruning criterion such as 'group_l2'), got "
                        f"{v!r} ({type(v).__name__})")
    return v


def _check_target_speed_ups(v):
    if v is None:
        return None
    if isinstance(v, (str, bytes)) or not isinstance(v, (list, tuple)):
        raise TypeError(f"{_where('target_speed_ups')} must be a list of floats > 1 or None, got {v!r} "
                        f"({type(v).__name__})")
    out = []
    for i, s in enumerate(v):
        s = _real(f"target_speed_ups[{i}]", s, "a float > 1 (a MACs speed-up)")
        if not math.isfinite(s) or s <= 1:
            raise ValueError(f"{_where(f'target_speed_ups[{i}]')} must be a finite float > 1 (a MACs speed-up), "
                             f"got {s}")
        out.append(s)
    return out or None


def _check_num_data_models(v):
    return None if v is None else _int("num_data_models", v, 1)


def _check_validation_scores(v):
    if v is None:
        return None
    if not isinstance(v, dict):
        raise TypeError(f"{_where('validation_scores')} must be a dict of metric name (str) -> float, or None, got "
                        f"{v!r} ({type(v).__name__})")
    out = {}
    for k, s in v.items():
        if not isinstance(k, str):
            raise TypeError(f"{_where('validation_scores')} keys must be metric names (str), got {k!r}")
        out[k] = _real(f"validation_scores[{k!r}]", s, "a float (a metric value)")
    return out


_FIELD_CHECKS: dict[str, Callable[[Any], Any]] = {
    "hidden_size": _check_hidden_size,
    "num_layers": _check_num_layers,
    "aggregations": _check_aggregations,
    "residual_scale": _check_residual_scale,
    "init_identity": _check_init_identity,
    "edge_kinds": _check_edge_kinds,
    "node_kinds": _check_node_kinds,
    "edge_chunk_size": _check_edge_chunk_size,
    "criterion": _check_criterion,
    "base_architecture": lambda v: _optional_str("base_architecture", v),
    "dataset": lambda v: _optional_str("dataset", v),
    "target_speed_ups": _check_target_speed_ups,
    "num_data_models": _check_num_data_models,
    "validation_scores": _check_validation_scores,
    "training_command": lambda v: _optional_str("training_command", v),
}


class MetaPrunerConfig(PretrainedConfig):
    """Size and behaviour of a :class:`MetaPrunerModel`.

    Args:
        hidden_size: width of node and edge states (int >= 1).
        num_layers: message-passing layers (int >= 0; each updates nodes, then edges).
        aggregations: how messages are pooled at a node, in both edge directions (non-empty list of
            ``AGGREGATIONS``).
        residual_scale: ε in ``W' = W + ε·rms(W)·Δ`` (finite float >= 0): the step size of the metanetwork's edits,
            relative to the RMS of each weight kind.
        init_identity: start the decoders at zero, so an untrained metanetwork is exactly the identity and
            meta-training starts from the data models' accuracy whatever ε is.
        edge_kinds: weight kinds the metanetwork has an encoder/decoder for (kernel shapes, e.g. "3x3";
            "flatK" for a linear layer reading K spatial positions per channel). Keep this to the kinds the
            target family uses, so that no parameter is left unused during distributed training.
        node_kinds: per-channel record kinds (see ``hf_metaprune.graph.NODE_KINDS``).
        edge_chunk_size: edges processed at once by the edge MLPs (speed and memory only; results identical).
        criterion: the pruning criterion the metanetwork was trained for.
        base_architecture / dataset / target_speed_ups / num_data_models / validation_scores / training_command:
            what it was trained for and on, its prune-and-probe scores and the command that trained it; written to
            the model card.

    Every field is checked on construction and on assignment: a wrong type raises ``TypeError`` and a value out of
    range ``ValueError``, both naming the field. Loading a ``config.json`` additionally requires the fields in
    ``REQUIRED_FIELDS`` (a saved config always has them) and a ``model_type`` of ``"metapruner"``.
    """

    model_type = "metapruner"

    def __init__(
        self,
        hidden_size: int = 64,
        num_layers: int = 8,
        aggregations: tuple[str, ...] | list[str] = ("mean", "max", "min", "std"),
        residual_scale: float = 0.01,
        init_identity: bool = True,
        edge_kinds: tuple[str, ...] | list[str] = DEFAULT_EDGE_KINDS,
        node_kinds: tuple[str, ...] | list[str] = tuple(NODE_KINDS),
        edge_chunk_size: int = 32768,
        criterion: str = "group_l2",
        base_architecture: str | None = None,
        dataset: str | None = None,
        target_speed_ups: list[float] | None = None,
        num_data_models: int | None = None,
        validation_scores: dict[str, float] | None = None,
        training_command: str | None = None,
        **kwargs,
    ):
        # every assignment goes through __setattr__, which validates and normalises the field
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.aggregations = aggregations
        self.residual_scale = residual_scale
        self.init_identity = init_identity
        self.edge_kinds = edge_kinds
        self.node_kinds = node_kinds
        self.edge_chunk_size = edge_chunk_size
        self.criterion = criterion
        self.base_architecture = base_architecture
        self.dataset = dataset
        self.target_speed_ups = target_speed_ups
        self.num_data_models = num_data_models
        self.validation_scores = validation_scores
        self.training_command = training_command
        super().__init__(**kwargs)

    def __setattr__(self, key, value):
        check = _FIELD_CHECKS.get(key)
        if check is not None:
            value = check(value)
        super().__setattr__(key, value)

    @classmethod
    def for_graphs(cls, graphs, **kwargs) -> "MetaPrunerConfig":
        """A config whose edge/node kinds are exactly those used by ``graphs`` (no dead parameters)."""
        if not isinstance(graphs, (list, tuple)) or not graphs or not all(
                hasattr(g, "edges") and hasattr(g, "records") for g in graphs):
            raise TypeError("MetaPrunerConfig.for_graphs: graphs must be a non-empty list of NetworkGraph (from "
                            f"hf_metaprune.model_to_graph), got {type(graphs).__name__}")
        edge_kinds = sorted({k for g in graphs for k in g.edges})
        node_kinds = sorted({k for g in graphs for k in g.records})
        return cls(edge_kinds=edge_kinds, node_kinds=node_kinds, **kwargs)

    # ---- loading ------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs) -> "MetaPrunerConfig":
        """``PretrainedConfig.from_pretrained``; a local path that does not exist, or a folder without
        ``config.json``, raises ``FileNotFoundError`` naming it (not an error about Hub repo ids)."""
        where = f"{cls.__name__}.from_pretrained"
        source = pretrained_model_name_or_path
        if not isinstance(source, (str, os.PathLike)):
            raise TypeError(f"{where}: pretrained_model_name_or_path must be a local folder, a config.json file or a "
                            f"Hub repo id (str or os.PathLike), got {source!r} ({type(source).__name__})")
        path = os.fsdecode(os.fspath(source))
        local = os.path.expanduser(path)
        if os.path.isdir(local):
            folder = os.path.join(local, kwargs["subfolder"]) if kwargs.get("subfolder") else local
            if not os.path.isfile(os.path.join(folder, "config.json")):
                raise FileNotFoundError(f"{where}: '{folder}' has no config.json")
            source = local
        elif os.path.isfile(local):
            source = local
        elif looks_like_local_path(pretrained_model_name_or_path, path):
            raise missing_local_path(where, path)
        return super().from_pretrained(source, *args, **kwargs)

    @classmethod
    def _dict_from_json_file(cls, json_file: str | os.PathLike):
        """Read ``json_file``; not JSON, or not a JSON object, is a ``ValueError`` naming the file."""
        try:
            with open(json_file, encoding="utf-8") as reader:
                config_dict = json.loads(reader.read())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            # a plain ValueError: transformers turns JSONDecodeError into an OSError without the reason
            raise ValueError(f"MetaPrunerConfig: {json_file} is not valid JSON (truncated or corrupt?): {e}") from None
        if not isinstance(config_dict, dict):
            raise ValueError(f"MetaPrunerConfig: {json_file} must hold a JSON object of config fields, got a "
                             f"{type(config_dict).__name__}")
        _check_config_dict(config_dict, str(json_file))
        return cls._decode_special_floats(config_dict)

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs) -> "MetaPrunerConfig":
        """``PretrainedConfig.from_dict``, refusing a dict of another model type or without the fields in
        ``REQUIRED_FIELDS`` (used by ``from_pretrained`` and ``AutoConfig``)."""
        if not isinstance(config_dict, dict):
            raise TypeError(f"MetaPrunerConfig.from_dict: config_dict must be a dict, got {type(config_dict).__name__}")
        _check_config_dict(config_dict, "the config")
        return super().from_dict(config_dict, **kwargs)


def _check_config_dict(config_dict: dict, source: str) -> None:
    model_type = config_dict.get("model_type", MetaPrunerConfig.model_type)
    if model_type != MetaPrunerConfig.model_type:
        raise ValueError(f"MetaPrunerConfig: {source} describes a model of type {model_type!r}, not a metanetwork "
                         f"('{MetaPrunerConfig.model_type}')")
    weights = config_dict.get("transformers_weights")
    safe = isinstance(weights, str) and weights.endswith((".safetensors", ".safetensors.index.json"))
    if weights is not None and not safe:
        raise ValueError(f"MetaPrunerConfig: {source} names the weights file {weights!r} ('transformers_weights'); "
                         "only safetensors files are loaded (pickle can run arbitrary code)")
    missing = [k for k in REQUIRED_FIELDS if k not in config_dict]
    if missing:
        raise ValueError(f"MetaPrunerConfig: {source} lacks the field(s) {missing}, which a saved MetaPrunerConfig "
                         "always has (a truncated or hand-edited config.json?); they fix the metanetwork's weights, so "
                         "defaults are not substituted")
