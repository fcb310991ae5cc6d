"""Self-attention modules of transformer encoders (HF ViT, BERT, timm ViT and models built the same way), found by
structure.

Torch-Pruning's dependency graph couples a layer's query/key/value output channels with the output projection's
input channels as one channel space; what it does not know is that those channels come in heads of ``head_dim``,
and that query/key channels meet each other (in q·kᵀ) while value channels meet the output projection. The graph
splits that space in two (query/key, value/output) and the pruner removes *whole heads*; both find the attention
modules here by their structure (separate q/k/v projections, or one fused ``[3·H·d, C]`` projection as in timm's
ViTs, and a head-size attribute — no class names). A fused projection holds three head spaces side by side
(queries, keys, values: ``reshape(3, H, d)``), so head ``h`` is the same ``d`` rows in each third.

Decoder attention (🤗 Llama, Qwen2, Mistral, Phi: causal, rotary, often grouped-query with ``KV < H`` key/value heads
each serving ``g = H/KV`` query heads) is traced differently: Torch-Pruning cannot follow rotary embeddings (its group
search does not end) nor map a key/value head onto ``g`` query heads. The tracer sees only queries -> output
projection (the heads' channel space); keys and values *follow*: their rows go with the unit that owns their head,
their input columns with the query projection's. Pruning never cuts inside a head, so rotary tables stay valid.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from torch import nn

from .errors import UnsupportedModuleError

HEAD_SIZE_ATTRS = ("head_dim", "attention_head_size")
HEAD_COUNT_ATTRS = ("num_attention_heads", "num_heads", "n_heads")
HEAD_TOTAL_ATTRS = ("all_head_size", "attn_dim")  # heads x head size, kept by some modules for reshapes
QKV_NAMES = (("q_proj", "k_proj", "v_proj"), ("query", "key", "value"), ("q_lin", "k_lin", "v_lin"))
OUTPUT_NAMES = ("o_proj", "dense", "out_proj")  # a decoder attention's output projection
HEAD_GRANULARITIES = ("kv_group", "query")


class HeadLayout(NamedTuple):
    """How a projection's output channels form heads: ``parts`` blocks (3 for a fused q/k/v projection, else 1) of
    heads of ``head_dim`` channels; pruning head ``h`` removes its ``head_dim`` channels from every block, and entry
    ``h`` of the last dimension of every per-head parameter (``(full name, module, attribute)``)."""

    head_dim: int
    parts: int = 1
    per_head: tuple[tuple[str, nn.Module, str], ...] = ()
    # decoder attention: (full name, linear) of the key and value projections, left out of the trace. Their input
    # columns follow the query projection's; ``follower_rows`` of their output rows go with each unit (0: none do)
    followers: tuple[tuple[str, nn.Linear], ...] = ()
    follower_rows: int = 0


@dataclass
class AttentionModule:
    path: str
    module: nn.Module
    projections: tuple[nn.Linear, ...]  # (query, key, value), or (fused qkv,)
    head_dim: int
    # parameters with one entry per head in their last dimension (Swin's relative position bias table):
    # (full parameter name, owning module, attribute)
    per_head: tuple[tuple[str, nn.Module, str], ...] = ()
    output: nn.Linear | None = None  # decoders: the output projection (traced from the queries alone)

    @property
    def fused(self) -> bool:
        return len(self.projections) == 1

    @property
    def causal(self) -> bool:
        return self.output is not None

    @property
    def num_heads(self) -> int:
        return self.projections[0].out_features // self.head_dim // (3 if self.fused else 1)

    @property
    def num_key_value_heads(self) -> int:
        return self.num_heads if self.fused else self.projections[1].out_features // self.head_dim

    @property
    def traced_projections(self) -> tuple[nn.Linear, ...]:
        """The projections Torch-Pruning traces: all of them, or a decoder's query projection alone."""
        return self.projections[:1] if self.causal else self.projections

    def layout(self, granularity: str = "kv_group") -> HeadLayout:
        """How the traced projections' channels form pruning units. Decoders: a unit is one key/value group (its
        ``g`` query heads, key and value head), or with ``granularity="query"`` one query head in every group
        (keys and values kept; every group keeps the same number of query heads, as ``repeat_kv`` needs)."""
        if not self.causal:
            return HeadLayout(self.head_dim, 3 if self.fused else 1, self.per_head)
        g = self.num_heads // self.num_key_value_heads
        names = {m: n for n, m in self.module.named_children()}
        followers = tuple((f"{self.path}.{names[p]}" if self.path else names[p], p) for p in self.projections[1:])
        if granularity == "query" and g > 1:
            return HeadLayout(self.head_dim, self.num_key_value_heads, self.per_head, followers, 0)
        return HeadLayout(self.head_dim * g, 1, self.per_head, followers, self.head_dim)


def head_layouts(attention: list[AttentionModule], granularity: str = "kv_group") -> dict[nn.Module, HeadLayout]:
    """The head layout of every traced query/key/value projection (what the pruner needs to remove whole heads)."""
    if granularity not in HEAD_GRANULARITIES:
        raise ValueError(f"head_granularity must be one of {HEAD_GRANULARITIES}, got {granularity!r}")
    return {p: a.layout(granularity) for a in attention for p in a.traced_projections}


def find_attention_modules(model: nn.Module) -> list[AttentionModule]:
    """Every self-attention module of ``model``; raises for what head pruning cannot handle.

    Encoder-decoders and cross-attention raise :class:`UnsupportedModuleError` (keys/values from another sequence
    would need their own coupling), as does an attention module with neither separate q/k/v projections nor one
    fused ``[3·H·d, C]`` projection, and a causal one without separate q/k/v projections and an output projection
    (GPT-2's fused ``Conv1D``). The head count is read off the query projection where the module keeps none.
    """
    config = getattr(model, "config", None)
    if config is not None and (getattr(config, "add_cross_attention", False)
                               or getattr(config, "is_encoder_decoder", False)):
        raise UnsupportedModuleError("", model, "encoder-decoders and cross-attention are not supported; only "
                                                "self-attention heads (encoders, decoder-only LLMs) can be pruned")
    found = []
    for path, m in model.named_modules():
        if getattr(m, "is_cross_attention", False) or path.rsplit(".", 1)[-1] in ("crossattention", "cross_attn"):
            raise UnsupportedModuleError(path, m, "cross-attention is not supported")
        causal = getattr(m, "is_causal", None) is True  # 🤗 decoders (Llama, GPT-2, ...) mark their attention so
        heads = next((getattr(m, a) for a in HEAD_COUNT_ATTRS if isinstance(getattr(m, a, None), int)), None)
        head_dim = next((getattr(m, a) for a in HEAD_SIZE_ATTRS if isinstance(getattr(m, a, None), int)), None)
        scale = getattr(m, "scale", None)
        if head_dim is None and heads and isinstance(scale, float) and scale > 0:
            head_dim = round(scale ** -2)  # timm's WindowAttention keeps only the scale 1/sqrt(head_dim)
            if not _fused_projections(m, heads, head_dim):
                continue
        separate = _separate_projections(m, heads, head_dim)
        if separate and (heads is None or head_dim is None):  # read what the module does not keep off the widths
            width = separate[0].out_features
            heads, head_dim = (width // head_dim, head_dim) if head_dim else (heads, width // heads)
        if causal:
            found.append(_decoder_attention(path, m, separate, head_dim))
            continue
        if head_dim is None or heads is None:
            continue
        if separate:
            projections = separate
        else:
            fused = _fused_projections(m, heads, head_dim)
            if len(fused) != 1:
                raise UnsupportedModuleError(path, m, "attention without separate query/key/value projections "
                                                      f"(one of {QKV_NAMES}) or one fused [3·heads·head_dim, dim] "
                                                      "projection cannot be head-pruned")
            projections = (fused[0],)
        if any(p.out_features % head_dim for p in projections) or len({p.out_features for p in projections}) != 1:
            raise UnsupportedModuleError(path, m, f"q/k/v widths are not equal multiples of head size {head_dim}")
        found.append(AttentionModule(path, m, projections, head_dim))
    heads = {a.num_heads for a in found}
    for path, m in model.named_modules():  # a bias looked up per head (MPNet's, T5's): one column per head
        if isinstance(m, nn.Embedding) and m.embedding_dim in heads:
            raise UnsupportedModuleError(path, m, f"an embedding with one column per attention head "
                                                  f"({m.embedding_dim}, a relative position bias) is looked up "
                                                  "outside the attention modules: their heads cannot be pruned")
    for a in (a for a in found if not a.causal):  # per-head tables: in the module, or beside it (🤗 BEiT)
        parent = a.path.rpartition(".")[0]
        alone = sum(b.path.startswith(f"{parent}.") or not parent for b in found) == 1
        scope, prefix = (model.get_submodule(parent), parent) if alone else (a.module, a.path)
        a.per_head = tuple((".".join(x for x in (prefix, sub, n) if x), owner, n)
                           for sub, owner in scope.named_modules() if not isinstance(owner, _LAYERS)
                           for n, p in owner.named_parameters(recurse=False) if p.dim() and p.shape[-1] == a.num_heads)
    return found


_LAYERS = (nn.Linear, nn.modules.conv._ConvNd, nn.LayerNorm, nn.Embedding, nn.modules.batchnorm._BatchNorm)


def _separate_projections(m: nn.Module, heads: int | None, head_dim: int | None) -> tuple[nn.Linear, ...]:
    """A module's query, key and value projections: by name (:data:`QKV_NAMES`), or — in a module that keeps a head
    count or size — its first three child linears of equal width (a multiple of the head size) in definition
    order, the order every implementation declares them in; at most one more child linear (the output
    projection). ``()`` when there are none."""
    names = next((n for n in QKV_NAMES if all(isinstance(getattr(m, p, None), nn.Linear) for p in n)), None)
    if names is not None:
        return tuple(getattr(m, p) for p in names)
    if heads is None and head_dim is None:
        return ()
    linears = [c for c in m.children() if isinstance(c, nn.Linear)]
    unit = head_dim or heads
    same = [c for c in linears if c.out_features % unit == 0 and c.out_features == linears[0].out_features]
    if len(linears) not in (3, 4) or len(same) < 3 or linears[:3] != same[:3]:
        return ()
    return tuple(same[:3])


def _decoder_attention(path: str, m: nn.Module, projections: tuple[nn.Linear, ...],
                       head_dim: int | None) -> AttentionModule:
    """A causal self-attention module: separate q/k/v projections, an output projection, a head size; the query
    heads split evenly into the key/value heads' groups."""
    output = next((getattr(m, n) for n in OUTPUT_NAMES if isinstance(getattr(m, n, None), nn.Linear)), None)
    if not projections or output is None or head_dim is None:
        raise UnsupportedModuleError(path, m, "causal (decoder) attention needs separate query/key/value projections "
                                              f"(one of {QKV_NAMES}), an output projection (one of {OUTPUT_NAMES}) "
                                              "and a head_dim attribute to be head-pruned (GPT-2's fused Conv1D "
                                              "c_attn is not supported)")
    q, k, v = projections
    if q.out_features % head_dim or k.out_features % head_dim or k.out_features != v.out_features \
            or (q.out_features // head_dim) % (k.out_features // head_dim) or output.in_features != q.out_features:
        raise UnsupportedModuleError(path, m, f"query width {q.out_features}, key/value widths {k.out_features}/"
                                              f"{v.out_features} and output projection input {output.in_features} "
                                              f"do not form query heads of {head_dim} grouped over key/value heads")
    return AttentionModule(path, m, (q, k, v), head_dim, output=output)


def _fused_projections(m: nn.Module, heads: int, head_dim: int) -> list[nn.Linear]:
    return [c for c in m.children() if isinstance(c, nn.Linear) and c.out_features == 3 * heads * head_dim]


def sync_head_counts(attention: list[AttentionModule]) -> dict[str, int]:
    """After pruning: set each module's head count (and ``all_head_size`` / ``attn_dim``, a decoder's
    ``num_key_value_groups``) from its projections' widths; returns the query head count per module."""
    counts = {}
    for a in attention:
        n = a.num_heads
        for attr in HEAD_COUNT_ATTRS:
            if hasattr(a.module, attr):
                setattr(a.module, attr, n)
        for attr in HEAD_TOTAL_ATTRS:
            if hasattr(a.module, attr):
                setattr(a.module, attr, n * a.head_dim)
        if hasattr(a.module, "num_key_value_groups"):  # 🤗 decoders: query heads per key/value head (repeat_kv)
            a.module.num_key_value_groups = n // a.num_key_value_heads
        counts[a.path] = n
    return counts
