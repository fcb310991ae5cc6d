"""The graph metanetwork: a message-passing GNN mapping a network's graph to a more prunable network.

Node states are channels, edge states are weight slices. Each layer sends messages along every edge in both
directions (separate MLPs, so direction is distinguishable), pools them with several aggregations, updates
nodes, then updates edges from their endpoints. Decoders emit Δ per weight entry and the output is
``W' = W + ε·rms(W)·Δ`` (RMS per edge kind: ε is relative to the weights' scale). Everything is per-node /
per-edge plus permutation-invariant pooling, so permuting the
channels of a hidden layer permutes the output network the same way.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch_geometric.nn import MessagePassing

from ...graph import NODE_KINDS, NetworkGraph, edge_kind_size, graph_to_model, model_to_graph
from ...graph.tracing import device_of
from ...pruning import prune_to_speedup
from ...pruning.speedup import check_number
from ..base import PruningMethodPreTrainedModel
from . import model_card as _model_card
from .configuration import MetaPrunerConfig

NUM_ROLES = 3


def _mlp(in_dim: int, hidden: int, out_dim: int, norm: bool = True) -> nn.Sequential:
    layers = [nn.Linear(in_dim, hidden)]
    if norm:
        layers.append(nn.LayerNorm(hidden))
    return nn.Sequential(*layers, nn.SiLU(), nn.Linear(hidden, out_dim))


# Edges as ``(first row in the edge states, [2, E_k] index)`` per edge kind: inference walks the kinds' own index
# tensors instead of one concatenated copy (1.7 GB of int64 on BERT-base); training passes one concatenated tensor.
EdgeSegments = list[tuple[int, torch.Tensor]]


def edge_chunks(edge_index: torch.Tensor | EdgeSegments, step: int):
    """``(rows of the edge states, [2, c] index)`` for chunks of at most ``step`` edges."""
    segments = [(0, edge_index)] if isinstance(edge_index, torch.Tensor) else edge_index
    for first, index in segments:
        for i in range(0, index.shape[1], step):
            j = min(i + step, index.shape[1])
            yield slice(first + i, first + j), index[:, i:j]


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

    def forward(self, h: torch.Tensor, e: torch.Tensor, edge_index: torch.Tensor | EdgeSegments) -> torch.Tensor:
        h_source, h_target = self.source(h), self.target(h)
        chunks = ((rows, self.chunk(h_source, h_target, e[rows], index))
                  for rows, index in edge_chunks(edge_index, self.chunk_size))
        if torch.is_grad_enabled():
            outs = [out for _, out in chunks]
            return torch.cat(outs) if len(outs) > 1 else outs[0]
        out = e.new_empty(e.shape[0], self.out[-1].out_features)
        for rows, chunk in chunks:
            out[rows] = chunk
        return out

    def chunk(self, h_source: torch.Tensor, h_target: torch.Tensor, e: torch.Tensor, index: torch.Tensor
              ) -> torch.Tensor:
        """The MLP on the edges ``index`` (``[2, c]``) with states ``e`` (``[c, H]``), given the projected nodes."""
        # index_select, not h[index]: the advanced-indexing gather is an order of magnitude slower on CPU
        x = self.edge(e).add_(h_source.index_select(0, index[0])).add_(h_target.index_select(0, index[1]))
        return self.out(_layer_norm(x, self.norm) if isinstance(self.norm, nn.LayerNorm) else x)

    @torch.no_grad()
    def add_to(self, h: torch.Tensor, e: torch.Tensor, edge_index: torch.Tensor | EdgeSegments) -> None:
        """``e += self(h, e, edge_index)`` chunk by chunk, in place: inference never holds a second ``[E, H]``
        tensor (BERT-base has ~10⁸ edges). Each chunk reads only its own rows of ``e`` before writing them."""
        h_source, h_target = self.source(h), self.target(h)
        for rows, index in edge_chunks(edge_index, self.chunk_size):
            e[rows] += self.chunk(h_source, h_target, e[rows], index)


# aggregations :meth:`DirectedMessages.streamed` computes from running sums / extremes, chunk by chunk
STREAMED_AGGREGATIONS = frozenset({"sum", "add", "mean", "max", "min", "var", "std"})


class DirectedMessages(MessagePassing):
    """Messages along one edge direction, pooled with several aggregations (PyG ``MultiAggregation``).

    Without gradients (``transform`` / ``prune``) the messages are never materialised: each chunk of edges is
    pooled into running per-node sums, sums of squares and extremes (:meth:`streamed`), so the forward's memory
    holds node states and one chunk instead of ``[E, H]`` messages per direction and aggregation. Training keeps
    PyG's path (its aggregations' gradients)."""

    def __init__(self, hidden: int, aggregations: list[str], chunk_size: int):
        super().__init__(aggr=list(aggregations) if len(aggregations) > 1 else aggregations[0])
        self.aggregations = list(aggregations)
        self.mlp = EdgeMLP(hidden, hidden, chunk_size=chunk_size)

    def forward(self, h: torch.Tensor, edge_index: torch.Tensor | EdgeSegments, e: torch.Tensor,
                reverse: bool = False) -> torch.Tensor:
        """Messages from ``edge_index[0]`` to ``edge_index[1]`` (``reverse``: the other way)."""
        if not torch.is_grad_enabled() and STREAMED_AGGREGATIONS.issuperset(self.aggregations):
            return self.streamed(h, e, edge_index, reverse)
        if not isinstance(edge_index, torch.Tensor):
            edge_index = torch.cat([index for _, index in edge_index], dim=1)
        n = h.shape[0]
        return self.propagate(edge_index.flip(0) if reverse else edge_index, h=h, e=e, size=(n, n))

    def message(self, h: torch.Tensor, e: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        return self.mlp(h, e, edge_index)

    @torch.no_grad()
    def streamed(self, h: torch.Tensor, e: torch.Tensor, edge_index: torch.Tensor | EdgeSegments,
                 reverse: bool = False) -> torch.Tensor:
        """PyG's aggregations of the messages, from per-node running statistics updated one chunk at a time
        (equal to :meth:`propagate` within float rounding; nodes without incoming edges get 0, as in PyG)."""
        mlp, n = self.mlp, h.shape[0]
        width = mlp.out[-1].out_features
        h_source, h_target = mlp.source(h), mlp.target(h)
        wanted = set(self.aggregations)
        total = h.new_zeros(n, width) if wanted & {"sum", "add", "mean", "var", "std"} else None
        squares = h.new_zeros(n, width) if wanted & {"var", "std"} else None
        high = h.new_full((n, width), -torch.inf) if "max" in wanted else None
        low = h.new_full((n, width), torch.inf) if "min" in wanted else None
        count = torch.zeros(n, dtype=torch.long, device=h.device)
        for rows, index in edge_chunks(edge_index, mlp.chunk_size):
            index = index.flip(0) if reverse else index
            m, d = mlp.chunk(h_source, h_target, e[rows], index), index[1]
            count += torch.bincount(d, minlength=n)
            targets = d.unsqueeze(1).expand_as(m)  # scatter_*_ on CPU is ~10x faster than index_add_ here
            if total is not None:
                total.scatter_add_(0, targets, m)
            if squares is not None:
                squares.scatter_add_(0, targets, m * m)
            if high is not None:
                high.scatter_reduce_(0, targets, m, "amax")
            if low is not None:
                low.scatter_reduce_(0, targets, m, "amin")
        empty = (count == 0).unsqueeze(1)
        count = count.clamp(min=1).unsqueeze(1).to(h.dtype)
        pooled = {}
        for name in wanted:
            if name in ("sum", "add"):
                pooled[name] = total
            elif name == "mean":
                pooled[name] = total / count
            elif name in ("var", "std"):
                mean = total / count
                var = squares / count - mean * mean
                if name == "var":
                    pooled[name] = var
                else:  # PyG's StdAggregation: sqrt(max(var, 1e-5)), and 0 where that floor was hit
                    std = var.clamp(min=1e-5).sqrt()
                    pooled[name] = std.masked_fill(std <= 1e-5 ** 0.5, 0.0)
            else:
                pooled[name] = (high if name == "max" else low).masked_fill(empty, 0.0)
        return torch.cat([pooled[name] for name in self.aggregations], dim=-1)


class MetaLayer(nn.Module):
    def __init__(self, hidden: int, aggregations: list[str], chunk_size: int):
        super().__init__()
        self.forward_messages = DirectedMessages(hidden, aggregations, chunk_size)
        self.backward_messages = DirectedMessages(hidden, aggregations, chunk_size)
        self.node_update = _mlp(hidden * (1 + 2 * len(aggregations)), hidden, hidden)
        self.edge_update = EdgeMLP(hidden, hidden, chunk_size=chunk_size)

    def forward(self, h: torch.Tensor, e: torch.Tensor, edge_index: torch.Tensor | EdgeSegments):
        m_fwd = self.forward_messages(h, edge_index, e)
        m_bwd = self.backward_messages(h, edge_index, e, reverse=True)
        h = h + self.node_update(torch.cat([h, m_fwd, m_bwd], dim=-1))
        if torch.is_grad_enabled():
            return h, e + self.edge_update(h, e, edge_index)
        self.edge_update.add_to(h, e, edge_index)  # inference: edge states updated in place
        return h, e


class MetaPrunerPreTrainedModel(PruningMethodPreTrainedModel):
    config_class = MetaPrunerConfig
    base_model_prefix = "metapruner"
    main_input_name = "graph"
    checkpoint_noun = "metanetwork"

    def model_card(self, repo_id: str | None = None):
        return _model_card.metapruner_model_card(self.config, repo_id)

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
        # Weights are encoded (and edited) relative to their kind's RMS: raw conv weights are ~1e-1..1e-2, and
        # the metanetwork should see their relative sizes, not the absolute scale of one architecture.
        scales = {k: _rms(graph.edges[k].features) for k in kinds}
        if torch.is_grad_enabled():
            edge_index = torch.cat([graph.edges[k].index for k in kinds], dim=1)
            e = torch.cat([self.edge_encoders[k](graph.edges[k].features.to(dtype) / scales[k].to(dtype))
                           for k in kinds], dim=0)
        else:  # inference: the kinds' own index tensors, edge states encoded chunk by chunk into one tensor
            edge_index, num_edges = [], 0
            for k in kinds:
                edge_index.append((num_edges, graph.edges[k].index))
                num_edges += graph.edges[k].index.shape[1]
            e = h.new_empty(num_edges, self.config.hidden_size)
            for (first, _), k in zip(edge_index, kinds):
                features, scale = graph.edges[k].features, scales[k].to(dtype)
                for i in range(0, features.shape[0], self.config.edge_chunk_size):
                    rows = features[i:i + self.config.edge_chunk_size]
                    e[first + i:first + i + rows.shape[0]] = self.edge_encoders[k](rows.to(dtype) / scale)
        for layer in self.layers:
            h, e = layer(h, e, edge_index)

        eps = self.config.residual_scale
        new_edges, start = {}, 0
        for k in kinds:
            es = graph.edges[k]
            stop = start + es.index.shape[1]
            delta = self.edge_decoders[k](h, e[start:stop], es.index)
            if torch.is_grad_enabled():
                new_edges[k] = es.features + (eps * scales[k]) * delta.to(es.features.dtype)
            else:  # the same sum, in delta's memory (no [E, 1] temporaries beside it)
                new_edges[k] = delta.to(es.features.dtype).mul_(eps * scales[k]).add_(es.features)
            start = stop
        del e
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


def _layer_norm(x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    """``norm(x)`` over the last dimension from elementwise ops: for the edges' rows of a few to a few dozen
    features, ``F.layer_norm`` on CPU is ~20x slower than this (same result within float rounding)."""
    centred = x - x.mean(-1, keepdim=True)
    scale = torch.rsqrt(centred.pow(2).mean(-1, keepdim=True) + norm.eps)
    return centred * scale * norm.weight + norm.bias


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
