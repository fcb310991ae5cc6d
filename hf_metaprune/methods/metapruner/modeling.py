"""The graph metanetwork: a message-passing GNN mapping a network's graph to a more prunable network.

Node states are channels, edge states are weight slices. Each layer sends messages along every edge in both
directions (separate MLPs, so direction is distinguishable), pools them with several aggregations, updates
nodes, then updates edges from their endpoints. Decoders emit Δ per weight entry and the output is
``W' = W + ε·rms(W)·Δ`` (RMS per edge kind: ε is relative to the weights' scale). Everything is per-node /
per-edge plus permutation-invariant pooling, so permuting the
channels of a hidden layer permutes the output network the same way.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from typing import Any

import torch
from torch import nn
from huggingface_hub import HfApi
from safetensors import SafetensorError
from torch_geometric.nn import MessagePassing
from transformers import PreTrainedModel

from ..._io import PRUNED_CONFIG_NAME, WEIGHT_FILE, atomic_update, check_loading_info, remove_stale_weights
from ...graph import NODE_KINDS, NetworkGraph, edge_kind_size, graph_to_model, model_to_graph
from ...graph.tracing import device_of
from ...pruning import prune_to_speedup
from ...pruning.speedup import check_number
from . import model_card as _model_card
from .configuration import MetaPrunerConfig, looks_like_local_path, missing_local_path

NUM_ROLES = 3
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
SAVE_HUB_KWARGS = ("repo_id", "commit_message", "private", "token", "revision", "create_pr")
_PICKLE_FILE = re.compile(r"pytorch_model(-\d{5}-of-\d{5})?\.bin(\.index\.json)?")


def _mlp(in_dim: int, hidden: int, out_dim: int, norm: bool = True) -> nn.Sequential:
    layers = [nn.Linear(in_dim, hidden)]
    if norm:
        layers.append(nn.LayerNorm(hidden))
    return nn.Sequential(*layers, nn.SiLU(), nn.Linear(hidden, out_dim))


class EdgeMLP(nn.Module):
    """MLP on ``[edge, source node, target node]``, computed in chunks of edges.

    The first linear layer is split into three, so node projections are computed once per node and gathered
    per edge: an ``[E, 3H]`` tensor never exists. Edges are processed ``chunk_size`` at a time so the
    intermediate activations stay in cache (ResNet-50 has ~1.5·10⁷ edges; whole-tensor ops are memory-bound).
    """

    def __init__(self, hidden: int, out_dim: int, norm: bool = True, chunk_size: int = 32768):
        super().__init__()
        self.edge = nn.Linear(hidden, hidden)
        self.source = nn.Linear(hidden, hidden, bias=False)
        self.target = nn.Linear(hidden, hidden, bias=False)
        self.norm = nn.LayerNorm(hidden) if norm else nn.Identity()
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, out_dim))
        self.chunk_size = chunk_size

    def forward(self, h: torch.Tensor, e: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        h_source, h_target = self.source(h), self.target(h)
        src, dst = edge_index
        num_edges, step = e.shape[0], self.chunk_size
        chunks = (self._chunk(h_source, h_target, e, src, dst, i, i + step) for i in range(0, num_edges, step))
        if torch.is_grad_enabled():
            return torch.cat(list(chunks)) if num_edges > step else self._chunk(h_source, h_target, e, src, dst)
        out = e.new_empty(num_edges, self.out[-1].out_features)
        for i, chunk in zip(range(0, num_edges, step), chunks):
            out[i:i + step] = chunk
        return out

    def _chunk(self, h_source, h_target, e, src, dst, start: int = 0, stop: int | None = None) -> torch.Tensor:
        x = self.edge(e[start:stop]).add_(h_source[src[start:stop]]).add_(h_target[dst[start:stop]])
        return self.out(self.norm(x))


class DirectedMessages(MessagePassing):
    """Messages along one edge direction, pooled with several aggregations (PyG ``MultiAggregation``)."""

    def __init__(self, hidden: int, aggregations: list[str], chunk_size: int):
        super().__init__(aggr=list(aggregations) if len(aggregations) > 1 else aggregations[0])
        self.mlp = EdgeMLP(hidden, hidden, chunk_size=chunk_size)

    def forward(self, h: torch.Tensor, edge_index: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        n = h.shape[0]
        return self.propagate(edge_index, h=h, e=e, size=(n, n))

    def message(self, h: torch.Tensor, e: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        return self.mlp(h, e, edge_index)


class MetaLayer(nn.Module):
    def __init__(self, hidden: int, aggregations: list[str], chunk_size: int):
        super().__init__()
        self.forward_messages = DirectedMessages(hidden, aggregations, chunk_size)
        self.backward_messages = DirectedMessages(hidden, aggregations, chunk_size)
        self.node_update = _mlp(hidden * (1 + 2 * len(aggregations)), hidden, hidden)
        self.edge_update = EdgeMLP(hidden, hidden, chunk_size=chunk_size)

    def forward(self, h: torch.Tensor, e: torch.Tensor, edge_index: torch.Tensor):
        m_fwd = self.forward_messages(h, edge_index, e)
        m_bwd = self.backward_messages(h, edge_index.flip(0), e)
        h = h + self.node_update(torch.cat([h, m_fwd, m_bwd], dim=-1))
        e = e + self.edge_update(h, e, edge_index)
        return h, e


class MetaPrunerPreTrainedModel(PreTrainedModel):
    config_class = MetaPrunerConfig
    base_model_prefix = "metapruner"
    main_input_name = "graph"

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """Like ``PreTrainedModel.from_pretrained``, but only safetensors weights that fit exactly are loaded.

        * A local path that does not exist raises ``FileNotFoundError`` naming it (instead of being tried as a Hub
          repo id); a folder without ``config.json`` or ``model.safetensors`` raises ``FileNotFoundError`` naming
          the missing file. Pickle weights (``pytorch_model.bin``) are never loaded: ``use_safetensors`` is forced.
        * A ``config.json`` that is not valid JSON, of another model type, missing fields or with fields of the
          wrong type or range raises ``ValueError`` / ``TypeError`` naming the file or field.
        * transformers re-initialises mismatched or missing weights with only a warning; for a metanetwork that
          would silently produce a different pruner, so ``ValueError`` is raised instead; an unreadable weights
          file raises ``ValueError`` naming it.
        """
        where = f"{cls.__name__}.from_pretrained"
        want_info = kwargs.pop("output_loading_info", False)
        if kwargs.get("use_safetensors") is False:
            raise ValueError(f"{where}: use_safetensors=False is not supported; hf_metaprune never loads pickle "
                             "weights (pytorch_model.bin can run arbitrary code). Convert them to model.safetensors.")
        kwargs["use_safetensors"] = True
        kwargs["ignore_mismatched_sizes"] = True  # report mismatches in the loading info; refused below
        source = _resolve_pretrained_source(pretrained_model_name_or_path, where, kwargs)
        try:
            model, info = super().from_pretrained(source, *args, output_loading_info=True, **kwargs)
        except SafetensorError as e:  # truncated or corrupt weights file
            raise ValueError(f"{where}: the weights in {source} are not a readable safetensors file: {e}") from e
        check_loading_info(info, cls.__name__, source)
        return (model, info) if want_info else model

    def save_pretrained(self, save_directory, *args, is_main_process: bool = True, push_to_hub: bool = False,
                        overwrite_readme: bool = False, **kwargs):
        """``PreTrainedModel.save_pretrained`` plus a README.md model card (metadata and validation scores).

        The save is atomic: every file is written to a temporary folder inside ``save_directory`` and moved in only
        once all are complete, so a failure half-way (a config that cannot be written, an error rendering the card)
        leaves an earlier checkpoint there loadable bit for bit. Other files in the folder stay.

        Refused with ``FileExistsError`` before anything is written: a folder holding another kind of checkpoint
        (a :func:`hf_metaprune.save_pruned` network, a transformers model of another ``model_type``, weights
        without a metanetwork ``config.json``), and a ``README.md`` that is not this library's unedited model card
        from an earlier save (or a transformers Trainer's auto-generated card) — unless ``overwrite_readme=True``.
        ``is_main_process`` and ``push_to_hub`` (with ``repo_id``, ``commit_message``, ``private``, ``token``,
        ``revision``, ``create_pr``) work as in transformers; ``repo_id`` also names the model in the card.
        """
        where = f"{type(self).__name__}.save_pretrained"
        if not isinstance(overwrite_readme, bool):
            raise TypeError(f"{where}: overwrite_readme must be a bool, got {overwrite_readme!r}")
        path = _check_save_directory(save_directory, where, overwrite_readme)
        _check_config_serialisable(self.config, where)
        hub = {k: kwargs.pop(k) for k in SAVE_HUB_KWARGS if k in kwargs}
        created = not os.path.exists(path)
        try:
            with atomic_update(path) as tmp:
                super().save_pretrained(tmp, *args, is_main_process=is_main_process, **kwargs)
                written = set(os.listdir(tmp))
                if written:  # nothing is written on the other processes of a distributed run
                    text = _model_card.model_card_text(self.config, hub.get("repo_id"))
                    with open(os.path.join(tmp, _model_card.CARD_NAME), "w", newline="", encoding="utf-8") as f:
                        f.write(text)
        except BaseException:
            if created and os.path.isdir(path) and not os.listdir(path):
                os.rmdir(path)  # leave no empty folder behind a failed first save
            raise
        if written:
            remove_stale_weights(path, written)
        if push_to_hub and written:
            repo_id = hub.pop("repo_id", None) or os.path.basename(os.path.abspath(path))
            return self.push_to_hub(repo_id, **hub)
        return None

    def push_to_hub(self, repo_id: str, commit_message: str = "Upload metanetwork", private: bool | None = None,
                    token: str | bool | None = None, revision: str | None = None, create_pr: bool = False,
                    **save_kwargs) -> Any:
        """Save to a temporary folder (weights, config, model card) and upload it.

        transformers' own ``push_to_hub`` replaces README.md with a generic card; ours keeps the metanetwork's.
        """
        if not isinstance(repo_id, str) or not repo_id:
            raise TypeError(f"{type(self).__name__}.push_to_hub: repo_id must be a non-empty str ('namespace/name'), "
                            f"got {repo_id!r}")
        api = HfApi(token=token)
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp, repo_id=repo_id, **save_kwargs)
            return api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=commit_message,
                                     revision=revision, create_pr=create_pr)

    def _init_weights(self, module: nn.Module):
        if isinstance(module, nn.Linear):
            module.reset_parameters()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=1.0)


class MetaPrunerModel(MetaPrunerPreTrainedModel):
    """Graph metanetwork ``M``: ``W' = G⁻¹(M(G(W)))`` with the same architecture as ``W``.

    Use :meth:`transform` for a transformed copy of a network and :meth:`prune` for transform + structured
    pruning to a MACs speed-up.
    """

    def __init__(self, config: MetaPrunerConfig):
        super().__init__(config)
        h = config.hidden_size
        self.role_embedding = nn.Embedding(NUM_ROLES, h)
        self.edge_encoders = nn.ModuleDict({k: _mlp(edge_kind_size(k), h, h, norm=False) for k in config.edge_kinds})
        self.record_encoders = nn.ModuleDict(
            {k: _mlp(len(NODE_KINDS[k].columns), h, h, norm=False) for k in config.node_kinds})
        chunk = config.edge_chunk_size
        self.layers = nn.ModuleList([MetaLayer(h, config.aggregations, chunk) for _ in range(config.num_layers)])
        self.edge_decoders = nn.ModuleDict(
            {k: EdgeMLP(h, edge_kind_size(k), norm=False, chunk_size=chunk) for k in config.edge_kinds})
        self.record_decoders = nn.ModuleDict(
            {k: _mlp(2 * h, h, len(NODE_KINDS[k].columns), norm=False) for k in config.node_kinds})
        self.post_init()
        if config.init_identity:
            for decoder in [*self.edge_decoders.values(), *self.record_decoders.values()]:
                last = decoder.out[-1] if isinstance(decoder, EdgeMLP) else decoder[-1]
                nn.init.zeros_(last.weight)
                nn.init.zeros_(last.bias)

    def check_graph(self, graph: NetworkGraph) -> None:
        missing = [k for k in graph.edges if k not in self.edge_encoders]
        missing += [k for k in graph.records if k not in self.record_encoders]
        if missing:
            raise ValueError(f"this metanetwork has no encoder for the graph's feature kinds {missing}; it supports "
                             f"edges {list(self.edge_encoders)} and records {list(self.record_encoders)}")

    def forward(self, graph: NetworkGraph | list[NetworkGraph]) -> NetworkGraph | list[NetworkGraph]:
        """Return the graph of the transformed network (differentiable w.r.t. the metanetwork).

        A list of graphs is transformed in one call (one distributed forward for a batch of data models).
        The graph's features may have another floating dtype than the metanetwork: they are encoded in the
        metanetwork's dtype, and the output features keep the graph's dtype (``W + ε·rms(W)·Δ`` is added in it).
        """
        if isinstance(graph, (list, tuple)):
            return [self._transform_graph(_require_graph(g, f"graph[{i}]")) for i, g in enumerate(graph)]
        return self._transform_graph(_require_graph(graph, "graph"))

    def _transform_graph(self, graph: NetworkGraph) -> NetworkGraph:
        self.check_graph(graph)
        dtype = self.role_embedding.weight.dtype  # the metanetwork's; the graph's features may differ
        h = self.role_embedding(graph.node_role)
        record_states = {}
        for kind, rec in graph.records.items():
            record_states[kind] = self.record_encoders[kind](_record_inputs(kind, rec.features.to(dtype)))
            h = h.index_add(0, rec.node, record_states[kind])
        kinds = list(graph.edges)
        edge_index = torch.cat([graph.edges[k].index for k in kinds], dim=1)
        # Weights are encoded (and edited) relative to their kind's RMS: raw conv weights are ~1e-1..1e-2, and
        # the metanetwork should see their relative sizes, not the absolute scale of one architecture.
        scales = {k: _rms(graph.edges[k].features) for k in kinds}
        e = torch.cat([self.edge_encoders[k](graph.edges[k].features.to(dtype) / scales[k].to(dtype)) for k in kinds],
                      dim=0)
        for layer in self.layers:
            h, e = layer(h, e, edge_index)

        eps = self.config.residual_scale
        new_edges, start = {}, 0
        for k in kinds:
            es = graph.edges[k]
            stop = start + es.index.shape[1]
            delta = self.edge_decoders[k](h, e[start:stop], es.index)
            new_edges[k] = es.features + (eps * scales[k]) * delta.to(es.features.dtype)
            start = stop
        new_records = {}
        for kind, rec in graph.records.items():
            delta = self.record_decoders[kind](torch.cat([h[rec.node], record_states[kind]], dim=-1))
            trainable = torch.tensor(NODE_KINDS[kind].trainable, device=delta.device)
            new_records[kind] = rec.features + eps * torch.where(trainable, delta, 0).to(rec.features.dtype)
        return graph.with_features(new_edges, new_records)

    def transform(self, model: nn.Module, example_inputs: Any) -> nn.Module:
        """A new network of the same architecture with the metanetwork's weights (``model`` is untouched).

        The result keeps ``model``'s dtype(s), device, ``requires_grad`` flags and train/eval mode. A model in
        another floating dtype than the metanetwork (``model.half()``, ``model.double()``) is fine: its weights
        are encoded in the metanetwork's dtype, and the edit ``ε·rms(W)·Δ`` is cast to the model's dtype and added
        to ``W`` there (an identity metanetwork returns ``W`` bit for bit). ``example_inputs`` must be in the
        model's dtype, as for :func:`hf_metaprune.prune_to_speedup`.
        """
        if not isinstance(model, nn.Module):
            raise TypeError(f"{type(self).__name__}.transform: model must be a torch.nn.Module, got "
                            f"{type(model).__name__}")
        graph = model_to_graph(model, example_inputs)
        with torch.no_grad():
            new_graph = self(graph.to(self.device)).to(device_of(model))
        return graph_to_model(new_graph, model)

    def prune(self, model: nn.Module, example_inputs: Any, speed_up: float = 2.0, **prune_kwargs):
        """Transform ``model`` with the metanetwork, then prune it structurally to ``speed_up`` (MACs ratio).

        Keyword arguments go to :func:`hf_metaprune.prune_to_speedup`. Returns a :class:`PruneResult`; its model
        has ``model``'s dtype (see :meth:`transform`).
        """
        check_number("speed_up", speed_up, 1.0, low_inclusive=False)  # before the transform's work
        if not isinstance(model, nn.Module):
            raise TypeError(f"{type(self).__name__}.prune: model must be a torch.nn.Module, got {type(model).__name__}")
        return prune_to_speedup(self.transform(model, example_inputs), example_inputs, speed_up, **prune_kwargs)


def _record_inputs(kind: str, features: torch.Tensor) -> torch.Tensor:
    log_cols = NODE_KINDS[kind].log_scale
    if not any(log_cols):
        return features
    mask = torch.tensor(log_cols, device=features.device)
    return torch.where(mask, features.clamp_min(1e-8).log(), features)


def _rms(x: torch.Tensor) -> torch.Tensor:
    return x.detach().float().pow(2).mean().sqrt().clamp_min(1e-8).to(x.dtype)


def _require_graph(graph: Any, what: str) -> NetworkGraph:
    if not isinstance(graph, NetworkGraph):
        raise TypeError(f"MetaPrunerModel: {what} must be a NetworkGraph (from hf_metaprune.model_to_graph), got "
                        f"{type(graph).__name__}")
    return graph


def _path_argument(value: Any, argument: str, expected: str, where: str) -> str:
    """``value`` (str or os.PathLike) as a str path, or a TypeError naming ``argument``."""
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{where}: {argument} must be {expected} (str or os.PathLike), got {value!r} "
                        f"({type(value).__name__})")
    path = os.fspath(value)
    return os.fsdecode(path) if isinstance(path, bytes) else path


def _resolve_pretrained_source(source: Any, where: str, kwargs: dict) -> Any:
    """``source`` for transformers: a checked local folder, or a Hub repo id left as it is."""
    if source is None:  # transformers' config= + state_dict= loading
        return None
    path = _path_argument(source, "pretrained_model_name_or_path", "a local folder or a Hub repo id", where)
    local = os.path.expanduser(path)
    if not os.path.isdir(local):
        if os.path.exists(local):
            raise NotADirectoryError(f"{where}: '{path}' is a file; expected the folder written by save_pretrained "
                                     f"(holding {CONFIG_NAME} and {WEIGHTS_NAME})")
        if looks_like_local_path(source, path):
            raise missing_local_path(where, path)
        return source  # a Hub repo id
    folder = os.path.join(local, kwargs["subfolder"]) if kwargs.get("subfolder") else local
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{where}: '{path}' has no subfolder '{kwargs.get('subfolder')}'")
    names = set(os.listdir(folder))
    if PRUNED_CONFIG_NAME in names and CONFIG_NAME not in names:
        raise FileNotFoundError(f"{where}: '{folder}' holds a pruned network saved with hf_metaprune.save_pruned "
                                f"({PRUNED_CONFIG_NAME}), not a metanetwork; load it with hf_metaprune.load_pruned")
    if CONFIG_NAME not in names and not isinstance(kwargs.get("config"), MetaPrunerConfig):
        raise FileNotFoundError(f"{where}: '{folder}' has no {CONFIG_NAME}; a metanetwork folder written by "
                                f"save_pretrained holds {CONFIG_NAME} and {WEIGHTS_NAME} (found: {sorted(names)})")
    variant = kwargs.get("variant")
    weights = [WEIGHTS_NAME, WEIGHTS_INDEX_NAME]
    if variant:
        weights = [f"model.{variant}.safetensors", f"model.safetensors.index.{variant}.json"]
    if not any(w in names for w in weights):
        pickles = sorted(n for n in names if _PICKLE_FILE.fullmatch(n) or n.endswith((".bin", ".pt", ".pth", ".pkl")))
        if pickles:
            raise FileNotFoundError(f"{where}: '{folder}' has no {weights[0]}, only pickle weights {pickles}, which "
                                    "hf_metaprune never loads (unpickling can run arbitrary code); convert them to "
                                    f"safetensors (safetensors.torch.save_file) as {weights[0]}")
        raise FileNotFoundError(f"{where}: '{folder}' has no {weights[0]} (nor {weights[1]}); a metanetwork folder "
                                f"written by save_pretrained holds {CONFIG_NAME} and {WEIGHTS_NAME} (found: "
                                f"{sorted(names)})")
    return local


def _check_save_directory(save_directory: Any, where: str, overwrite_readme: bool) -> str:
    """Refuse, before anything is written, a path whose contents saving a metanetwork would destroy."""
    path = _path_argument(save_directory, "save_directory", "a folder path", where)
    if os.path.exists(path) and not os.path.isdir(path):
        raise NotADirectoryError(f"{where}: save_directory '{path}' is a file; expected a folder (it is created if "
                                 "missing)")
    if not os.path.isdir(path):
        return path
    names = set(os.listdir(path))
    found = []
    if PRUNED_CONFIG_NAME in names:
        found.append(f"a pruned network written by hf_metaprune.save_pruned ({PRUNED_CONFIG_NAME})")
    if "adapter_config.json" in names:
        found.append("a PEFT adapter (adapter_config.json)")
    if CONFIG_NAME in names:
        try:
            with open(os.path.join(path, CONFIG_NAME), encoding="utf-8") as f:
                config = json.load(f)
        except (OSError, ValueError):  # ValueError: JSONDecodeError and UnicodeDecodeError
            found.append(f"a {CONFIG_NAME} that is not valid JSON (not written by save_pretrained)")
        else:
            model_type = config.get("model_type") if isinstance(config, dict) else None
            if model_type != MetaPrunerConfig.model_type:
                found.append(f"a {CONFIG_NAME} of model_type {model_type!r}" if model_type else
                             f"a {CONFIG_NAME} without a model_type (e.g. a timm or other library's model)")
    elif any(WEIGHT_FILE.fullmatch(n) for n in names):
        found.append(f"weights {sorted(n for n in names if WEIGHT_FILE.fullmatch(n))} without a metanetwork "
                     f"{CONFIG_NAME} beside them")
    if found:
        raise FileExistsError(f"{where}: '{path}' already holds {', and '.join(found)}; saving a metanetwork there "
                              f"would overwrite its {CONFIG_NAME} / {WEIGHTS_NAME}. Choose another folder (or one "
                              "written by MetaPrunerModel.save_pretrained, which is updated in place).")
    readme = os.path.join(path, _model_card.CARD_NAME)
    if _model_card.CARD_NAME in names and not overwrite_readme:
        if not os.path.isfile(readme):
            raise FileExistsError(f"{where}: '{readme}' exists and is not a file; the model card cannot be written")
        with open(readme, encoding="utf-8", errors="replace", newline="") as f:
            replaceable = _model_card.is_replaceable_card(f.read())
        if not replaceable:
            raise FileExistsError(f"{where}: '{readme}' is not a model card written by save_pretrained (or it was "
                                  "edited since), and saving would replace it with the metanetwork's model card. Move "
                                  "it away, or pass overwrite_readme=True to replace it.")
    return path


def _check_config_serialisable(config: MetaPrunerConfig, where: str) -> None:
    try:
        config.to_json_string(use_diff=True)
    except (TypeError, ValueError) as e:
        bad = []
        for key, value in config.to_dict().items():
            try:
                json.dumps(config._encode_special_floats(value))
            except (TypeError, ValueError):
                bad.append(f"{key}={value!r} ({type(value).__name__})")
        raise TypeError(f"{where}: the config cannot be written as JSON: {'; '.join(bad) or e}. Config attributes "
                        "must be plain numbers, strings, bools, lists or dicts.") from e
