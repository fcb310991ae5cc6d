"""Exact, invertible mapping between a network and its graph.

Every weight tensor becomes a contiguous block of rows of one edge-feature tensor (a pure reshape, so the
inverse is bit-exact); every per-channel tensor becomes one column of a node-record tensor. The graph keeps
the bookkeeping (``slots``) needed to write the features back; it never reads weights from the template model.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from .attention import find_attention_modules
from .errors import UnsupportedModuleError
from .kinds import EMBEDDING_EDGE_KIND, NODE_KINDS, edge_kind_for_kernel
from .tracing import ChannelSpaces, trace_channel_spaces

ROLE_HIDDEN, ROLE_INPUT, ROLE_OUTPUT = 0, 1, 2


@dataclass
class EdgeSet:
    index: torch.Tensor  # [2, E] (source node, target node)
    features: torch.Tensor  # [E, kernel area]


@dataclass
class RecordSet:
    node: torch.Tensor  # [R] node each record is attached to
    features: torch.Tensor  # [R, columns of the kind]


@dataclass(frozen=True)
class Slot:
    """Where tensor ``name`` lives: rows ``start:end`` (and ``column`` for records) of feature set ``kind``."""

    name: str
    kind: str
    start: int
    end: int
    shape: tuple[int, ...]
    column: int | None = None  # None: edge slot (rows reshape to the weight)
    is_parameter: bool = True


@dataclass
class NetworkGraph:
    """A network as a graph: nodes are channels, edges are weight slices, records are per-channel tensors."""

    node_role: torch.Tensor  # [N] ROLE_HIDDEN / ROLE_INPUT / ROLE_OUTPUT
    node_set: torch.Tensor  # [N] id of the channel space each node belongs to
    set_names: list[str]
    edges: dict[str, EdgeSet]
    records: dict[str, RecordSet]
    slots: list[Slot]
    static_buffers: dict[str, torch.Tensor] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)  # a tied parameter's other names -> its name in slots

    @property
    def num_nodes(self) -> int:
        return self.node_role.numel()

    @property
    def num_edges(self) -> int:
        return sum(e.index.shape[1] for e in self.edges.values())

    @property
    def num_covered_parameters(self) -> int:
        """Parameter scalars represented in the graph (equals the model's parameter count)."""
        return sum(_numel(s.shape) for s in self.slots if s.is_parameter)

    def to(self, device: torch.device | str) -> "NetworkGraph":
        return replace(
            self,
            node_role=self.node_role.to(device),
            node_set=self.node_set.to(device),
            edges={k: EdgeSet(e.index.to(device), e.features.to(device)) for k, e in self.edges.items()},
            records={k: RecordSet(r.node.to(device), r.features.to(device)) for k, r in self.records.items()},
        )

    def with_features(self, edge_features: dict[str, torch.Tensor], record_features: dict[str, torch.Tensor]):
        """A graph with the same structure and new features (missing kinds keep their features)."""
        return replace(
            self,
            edges={k: EdgeSet(e.index, edge_features.get(k, e.features)) for k, e in self.edges.items()},
            records={k: RecordSet(r.node, record_features.get(k, r.features)) for k, r in self.records.items()},
        )

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every parameter and buffer of the network, built from the graph's features (differentiable)."""
        out: dict[str, torch.Tensor] = {}
        for s in self.slots:
            if s.column is None:
                out[s.name] = self.edges[s.kind].features[s.start:s.end].reshape(s.shape)
            else:
                out[s.name] = self.records[s.kind].features[s.start:s.end, s.column].reshape(s.shape)
        out.update(self.static_buffers)
        out.update({alias: out[name] for alias, name in self.aliases.items()})  # tied weights stay tied
        return out


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


class _GraphBuilder:
    def __init__(self, spaces: ChannelSpaces):
        self.spaces = spaces
        self.edge_parts: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self.record_parts: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self.rows: dict[str, int] = {}
        self.slots: list[Slot] = []
        self.static: dict[str, torch.Tensor] = {}
        self.input_sets: set[int] = set()
        self.aliases: dict[str, str] = {}

    def nodes(self, path: str, module: nn.Module, dim: str, size: int) -> torch.Tensor:
        nodes = self.spaces.dims.get((path, dim))
        if nodes is None and dim == "in":  # a raw model input (e.g. RGB): its own non-prunable channel space
            nodes = self.spaces.add_set(f"input:{path}", size)
            self.input_sets.add(len(self.spaces.set_names) - 1)
            self.spaces.dims[(path, dim)] = nodes
        if nodes is None or (nodes < 0).any() or nodes.numel() != size:
            raise UnsupportedModuleError(path, module, f"could not trace its {dim}put channels")
        return nodes

    def add_edges(self, name: str, kind: str, src: torch.Tensor, dst: torch.Tensor, feats: torch.Tensor, shape):
        start = self.rows.get(kind, 0)
        self.rows[kind] = start + feats.shape[0]
        self.edge_parts.setdefault(kind, []).append((torch.stack([src, dst]), feats))
        self.slots.append(Slot(name, kind, start, start + feats.shape[0], tuple(shape)))

    def add_records(self, kind: str, nodes: torch.Tensor, named: dict[str, tuple[str, torch.Tensor]]):
        """``named`` maps each column of the kind to (full tensor name, tensor)."""
        spec = NODE_KINDS[kind]
        start = self.rows.get(kind, 0)
        self.rows[kind] = start + nodes.numel()
        feats = torch.stack([named[c][1].detach().reshape(-1) for c in spec.columns], dim=1)
        self.record_parts.setdefault(kind, []).append((nodes, feats))
        for col, (c, trainable) in enumerate(zip(spec.columns, spec.trainable)):
            name, t = named[c]
            self.slots.append(Slot(name, kind, start, start + nodes.numel(), tuple(t.shape), col, trainable))

    def build(self) -> NetworkGraph:
        role = torch.zeros(self.spaces.num_nodes, dtype=torch.long)
        set_of_node = self.spaces.set_of_node
        for s in self.input_sets:
            role[set_of_node == s] = ROLE_INPUT
        for s in range(len(self.spaces.set_names)):
            if s not in self.input_sets and s not in self.spaces.consumed_sets:
                role[set_of_node == s] = ROLE_OUTPUT
        edges, records = {}, {}
        for kind in list(self.edge_parts):  # the builder's parts are consumed: they are the graph's size again
            index, features = map(list, zip(*self.edge_parts.pop(kind)))
            edges[kind] = EdgeSet(_concat_consuming(index, 1), _concat_consuming(features, 0))
        for kind in list(self.record_parts):
            nodes, features = map(list, zip(*self.record_parts.pop(kind)))
            records[kind] = RecordSet(_concat_consuming(nodes, 0), _concat_consuming(features, 0))
        return NetworkGraph(role, set_of_node.clone(), list(self.spaces.set_names), edges, records, self.slots,
                            self.static, self.aliases)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _add_conv(b: _GraphBuilder, path: str, m: nn.modules.conv._ConvNd):
    if m.transposed:
        raise UnsupportedModuleError(path, m, "transposed convolutions are not supported")
    w = m.weight.detach()
    out_nodes = b.nodes(path, m, "out", m.out_channels)
    in_nodes = b.nodes(path, m, "in", m.in_channels)
    out_per_group, in_per_group = m.out_channels // m.groups, m.in_channels // m.groups
    o = torch.arange(m.out_channels).repeat_interleave(in_per_group)
    i_local = torch.arange(in_per_group).repeat(m.out_channels)
    src = in_nodes[(o // out_per_group) * in_per_group + i_local]  # grouped convs only connect inside a group
    kind = edge_kind_for_kernel(tuple(m.kernel_size))
    b.add_edges(_join(path, "weight"), kind, src, out_nodes[o], w.reshape(m.out_channels * in_per_group, -1), w.shape)
    if m.bias is not None:
        b.add_records("bias", out_nodes, {"bias": (_join(path, "bias"), m.bias)})


def _add_linear(b: _GraphBuilder, path: str, m: nn.Linear):
    w = m.weight.detach()
    out_nodes = b.nodes(path, m, "out", m.out_features)
    in_nodes = b.nodes(path, m, "in", m.in_features)
    # After a flatten, each channel feeds several consecutive input features (channel-major order): one edge per
    # (channel, output) with the positions as features. Any other traced layout (the same channels twice side by
    # side, as a concatenation of a class token and a mean lays them out) gets one 1x1 edge per weight entry.
    channels = torch.unique_consecutive(in_nodes)
    positions = m.in_features // channels.numel()
    if positions * channels.numel() == m.in_features and torch.equal(in_nodes, channels.repeat_interleave(positions)):
        kind = "1x1" if positions == 1 else f"flat{positions}"
        o = torch.arange(m.out_features).repeat_interleave(channels.numel())
        src = channels.repeat(m.out_features)
        b.add_edges(_join(path, "weight"), kind, src, out_nodes[o], w.reshape(-1, positions), w.shape)
    else:
        o = torch.arange(m.out_features).repeat_interleave(m.in_features)
        b.add_edges(_join(path, "weight"), "1x1", in_nodes.repeat(m.out_features), out_nodes[o], w.reshape(-1, 1),
                    w.shape)
    if m.bias is not None:
        b.add_records("bias", out_nodes, {"bias": (_join(path, "bias"), m.bias)})


def _add_input_embedding(b: _GraphBuilder, name: str, module: nn.Module, table: torch.Tensor, channels: torch.Tensor):
    """A table of vectors indexed by token / position / segment (``[..., C]``): one input node per row, one edge
    per (row, channel) — an embedding is a linear layer on one-hot inputs."""
    rows = table.numel() // channels.numel()
    inputs = b.spaces.add_set(f"input:{name}", rows)
    b.input_sets.add(len(b.spaces.set_names) - 1)
    src = inputs.repeat_interleave(channels.numel())
    b.add_edges(name, EMBEDDING_EDGE_KIND, src, channels.repeat(rows), table.detach().reshape(-1, 1), table.shape)


def _add_embedding(b: _GraphBuilder, path: str, m: nn.Embedding):
    _add_input_embedding(b, _join(path, "weight"), m, m.weight, b.nodes(path, m, "out", m.embedding_dim))


def _add_norm(b: _GraphBuilder, path: str, m: nn.Module):
    if isinstance(m, nn.LayerNorm) and len(m.normalized_shape) != 1:
        raise UnsupportedModuleError(path, m, "LayerNorm over more than one dimension")
    tensors = {n: t for n, t in list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False))
               if t is not None}
    size = next(iter(t for n, t in tensors.items() if n != "num_batches_tracked")).shape[0]
    nodes = b.nodes(path, m, "out", size)
    if "num_batches_tracked" in tensors:  # a step counter, not a per-channel value
        b.static[_join(path, "num_batches_tracked")] = tensors.pop("num_batches_tracked").clone()
    for kind, spec in NODE_KINDS.items():
        if set(spec.columns) == set(tensors):
            b.add_records(kind, nodes, {n: (_join(path, n), t) for n, t in tensors.items()})
            return
    raise UnsupportedModuleError(path, m, f"unexpected per-channel tensors {sorted(tensors)}")


def _add_prelu(b: _GraphBuilder, path: str, m: nn.PReLU):
    if m.num_parameters == 1:
        raise UnsupportedModuleError(path, m, "one slope shared by all channels is not a per-channel parameter; "
                                              "use nn.PReLU(num_parameters=<channels>)")
    _add_norm(b, path, m)


_HANDLERS = (
    (nn.PReLU, _add_prelu),
    (nn.modules.conv._ConvNd, _add_conv),
    (nn.Linear, _add_linear),
    (nn.Embedding, _add_embedding),
    (nn.modules.batchnorm._BatchNorm, _add_norm),
    (nn.LayerNorm, _add_norm),
    (nn.GroupNorm, _add_norm),
    (nn.modules.instancenorm._InstanceNorm, _add_norm),
)


def _check_float(model: nn.Module):
    for name, t in model.named_parameters():
        if not t.is_floating_point():
            raise TypeError(f"only floating-point models are supported; '{name}' has dtype {t.dtype}")


def _concat_consuming(parts: list[torch.Tensor], dim: int) -> torch.Tensor:
    """``torch.cat(parts, dim)`` that drops each part once copied, so the peak is the result plus one part rather
    than twice the result (BERT-base's edge index alone is 1.7 GB)."""
    size = sum(p.shape[dim] for p in parts)
    out = parts[0].new_empty(*parts[0].shape[:dim], size, *parts[0].shape[dim + 1:])
    start = 0
    while parts:
        part = parts.pop(0)
        out.narrow(dim, start, part.shape[dim]).copy_(part)
        start += part.shape[dim]
    return out


def model_to_graph(model: nn.Module, example_inputs: Any) -> NetworkGraph:
    """Trace ``model`` and represent every parameter and buffer of it in a :class:`NetworkGraph`.

    Raises :class:`UnsupportedModuleError` naming the first module whose parameters cannot be represented.
    """
    _check_float(model)
    spaces = trace_channel_spaces(model, example_inputs)
    head_nodes = _split_attention_spaces(spaces, model)
    b = _GraphBuilder(spaces)
    first_name: dict[int, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):  # tied weights (an LM head on the embedding)
        if first_name.setdefault(id(p), name) != name:
            b.aliases[name] = first_name[id(p)]
    for path, module in model.named_modules():
        for n, t in module.named_buffers(recurse=False):  # integer constants saved with the model
            if t is not None and not t.is_floating_point() and n != "num_batches_tracked" \
                    and n not in module._non_persistent_buffers_set:
                b.static[_join(path, n)] = t.clone()
        own = [n for n, p in module.named_parameters(recurse=False) if p is not None]
        tied = [n for n in own if _join(path, n) in b.aliases]
        if tied and len(tied) < len(own):
            raise UnsupportedModuleError(path, module, f"its parameters {tied} are tied to another module's but "
                                                       f"{sorted(set(own) - set(tied))} are not")
        if not own or tied:  # a module whose weights another module holds is represented there once
            continue
        handler = next((h for t, h in _HANDLERS if isinstance(module, t)), None)
        if handler is not None:
            handler(b, path, module)
            continue
        for n in own:  # loose parameters, e.g. a layer-scale gamma that Torch-Pruning traced as a 1-D tensor
            name = _join(path, n)
            p = getattr(module, n)
            if name in head_nodes:  # one entry per head (Swin's bias table): on each head's first query/key node
                if p.dim() == 1:
                    b.add_records("scale", head_nodes[name], {"weight": (name, p)})
                else:
                    _add_input_embedding(b, name, module, p, head_nodes[name])
                continue
            nodes = spaces.params.get(name)
            if nodes is None:  # unused by the traced forward (Dinov2's mask_token): a traced sibling's channels
                nodes = next((spaces.params[_join(path, o)] for o in own if _join(path, o) in spaces.params
                              and getattr(module, o).shape[-1] == p.shape[-1]), None)
            if nodes is None or (nodes < 0).any() or p.dim() == 0 or p.shape[-1] != nodes.numel():
                raise UnsupportedModuleError(path, module, f"parameter '{n}' of shape {tuple(p.shape)}")
            if p.dim() == 1:
                b.add_records("scale", nodes, {"weight": (name, p)})
            else:  # a class token / position table ([..., C]) added to the embedding channels
                _add_input_embedding(b, name, module, p, nodes)
    graph = b.build()
    _check_coverage(model, graph)
    return graph


def _split_attention_spaces(spaces: ChannelSpaces, model: nn.Module) -> dict[str, torch.Tensor]:
    """Give each attention layer two channel spaces: query/key channels (they meet in q·kᵀ) and value/output
    channels (the output projection reads the values). Torch-Pruning couples all four as one space; for a fused
    q/k/v projection it keeps the three thirds as separate channels, whose query and key thirds are merged here
    (one query/key node per channel, as with separate projections).

    Returns, for every per-head parameter, the node of each head it attaches to: the head's first query/key channel
    (a relative position bias is added to that head's q·kᵀ)."""
    names = {m: n for n, m in model.named_modules()}
    attention = find_attention_modules(model)
    for a in attention:
        if a.causal:
            _split_decoder_attention(spaces, a, names)
            continue
        if a.fused:
            nodes = spaces.dims.get((names[a.projections[0]], "out"))
            if nodes is None or (nodes < 0).any() or len(set(nodes.tolist())) != nodes.numel():
                raise UnsupportedModuleError(a.path, a.module, "its fused query/key/value channels were not traced "
                                                               "as one space")
            qk_nodes, k_nodes, v_nodes = nodes.chunk(3)
        else:
            q, k, v = (names[p] for p in a.projections)
            qk_nodes = spaces.dims.get((q, "out"))
            if qk_nodes is None or not torch.equal(qk_nodes, spaces.dims.get((v, "out"), torch.empty(0))):
                raise UnsupportedModuleError(a.path, a.module, "query and value channels were not traced as one space")
            k_nodes = v_nodes = qk_nodes
        vo_nodes = spaces.add_set(f"{a.path}:value", qk_nodes.numel())
        remap = torch.arange(spaces.num_nodes)
        remap[v_nodes] = vo_nodes
        if a.fused:
            remap[k_nodes] = qk_nodes
            spaces.merge_nodes(remap)
            qk_nodes = spaces.dims[(names[a.projections[0]], "out")][:qk_nodes.numel()]
            vo_nodes = spaces.dims[(names[a.projections[0]], "out")][-qk_nodes.numel():]
        else:  # every consumer of the shared space but q and k reads the values
            in_qk_space = torch.zeros(spaces.num_nodes, dtype=torch.bool)
            in_qk_space[qk_nodes] = True
            for key, nodes in spaces.dims.items():
                if key[0] not in (q, k) and bool(in_qk_space[nodes.clamp(min=0)].any()):
                    spaces.dims[key] = remap[nodes]
        qk_set = int(spaces.set_of_node[qk_nodes[0]])
        spaces.set_names[qk_set] = f"{a.path}:query_key"
        spaces.consumed_sets.update({qk_set, int(spaces.set_of_node[vo_nodes[0]])})
    if any(a.causal for a in attention):
        spaces.merge_nodes(torch.arange(spaces.num_nodes))  # drop the decoders' traced query spaces, now unused
        spaces.drop_empty_sets()
    head_nodes = {}  # read after every merge (merging renumbers nodes): the query channels of each head
    for a in attention:
        queries = spaces.dims[(names[a.projections[0]], "out")][:a.num_heads * a.head_dim]
        head_nodes.update({name: queries[::a.head_dim] for name, _, _ in a.per_head})
    return head_nodes


def _split_decoder_attention(spaces: ChannelSpaces, a, names: dict) -> None:
    """A decoder attention layer (traced as ``output(query(x))``, keys and values left out) as two node sets of
    ``KV·d`` channels, one per channel of a key/value head: query/key (query head ``h``'s channel ``t`` and key
    head ``h // g``'s channel ``t`` meet in q·kᵀ) and value/output (value head ``h // g``'s channel ``t`` is what
    the output projection's column ``(h, t)`` reads). The ``g`` query heads of a group are edges into the same
    nodes, so every weight is still one edge (the round trip stays exact) and the key/value heads get nodes of
    their own, which the traced space of ``H·d`` query channels could not give them."""
    q, k, v = (names[p] for p in a.projections)
    o = names[a.output]
    queries = spaces.dims.get((q, "out"))
    hidden = spaces.dims.get((q, "in"))
    if queries is None or hidden is None or (queries < 0).any() or not torch.equal(
            queries, spaces.dims.get((o, "in"), torch.empty(0))):
        raise UnsupportedModuleError(a.path, a.module, "its query and output projection channels were not traced "
                                                       "as one space")
    kv, d = a.num_key_value_heads, a.head_dim
    g = a.num_heads // kv
    channel = torch.arange(a.num_heads * d)
    grouped = channel // (g * d) * d + channel % d  # query channel (h, t) -> key/value channel (h // g, t)
    query_key = spaces.add_set(f"{a.path}:query_key", kv * d)
    value = spaces.add_set(f"{a.path}:value", kv * d)
    spaces.dims.update({(q, "out"): query_key[grouped], (k, "out"): query_key, (v, "out"): value,
                        (o, "in"): value[grouped], (k, "in"): hidden, (v, "in"): hidden})
    spaces.consumed_sets.update({len(spaces.set_names) - 2, len(spaces.set_names) - 1})


def _check_coverage(model: nn.Module, graph: NetworkGraph):
    covered = {s.name for s in graph.slots} | set(graph.static_buffers) | set(graph.aliases)
    for name in model.state_dict():  # parameters and persistent buffers
        if name not in covered:
            path = name.rsplit(".", 1)[0] if "." in name else ""
            module = model.get_submodule(path)
            raise UnsupportedModuleError(path, module, f"tensor '{name}' is not represented in the graph")
    total = sum(p.numel() for p in model.parameters())
    if graph.num_covered_parameters != total:
        raise RuntimeError(f"graph covers {graph.num_covered_parameters} parameters, model has {total}")


def graph_to_model(graph: NetworkGraph, model: nn.Module) -> nn.Module:
    """A copy of ``model`` (the architecture template) whose parameters and buffers all come from ``graph``."""
    new = copy.deepcopy(model)
    tensors = graph.tensors()
    state = new.state_dict(keep_vars=True)
    uncovered = sorted(set(state) - set(tensors))
    if uncovered:
        raise ValueError(f"graph does not cover the template model: {len(uncovered)} of its tensors are not in the "
                         f"graph (e.g. {uncovered[:3]}); was the graph built from another architecture?")
    for name, t in tensors.items():
        if name not in state or tuple(state[name].shape) != tuple(t.shape):
            have = tuple(state[name].shape) if name in state else None
            raise ValueError(f"graph does not match the template model: '{name}' has shape {tuple(t.shape)} in the "
                             f"graph and {have} in the model; was the graph built from another architecture?")
    with torch.no_grad():
        for name, t in tensors.items():
            state[name].copy_(t.detach())
    return new
