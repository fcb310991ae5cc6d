"""Self-attention modules of transformer encoders (HF ViT, BERT, timm ViT and models built the same way), found by
structure.

Torch-Pruning's dependency graph couples a layer's query/key/value output channels with the output projection's
input channels as one channel space; what it does not know is that those channels come in heads of ``head_dim``,
and that query/key channels meet each other (in q·kᵀ) while value channels meet the output projection. The graph
splits that space in two (query/key, value/output) and the pruner removes *whole heads*; both find the attention
modules here by their structure (separate q/k/v projections, or one fused ``[3·H·d, C]`` projection as in timm's
ViTs, and a head-size attribute — no class names). A fused projection holds three head spaces side by side
(queries, keys, values: ``reshape(3, H, d)``), so head ``h`` is the same ``d`` rows in each third.
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


class HeadLayout(NamedTuple):
    """How a projection's output channels form heads: ``parts`` blocks (3 for a fused q/k/v projection, else 1) of
    heads of ``head_dim`` channels; pruning head ``h`` removes its ``head_dim`` channels from every block, and entry
    ``h`` of the last dimension of every per-head parameter (``(full name, module, attribute)``)."""

    head_dim: int
    parts: int = 1
    per_head: tuple[tuple[str, nn.Module, str], ...] = ()


@dataclass
class AttentionModule:
    path: str
    module: nn.Module
    projections: tuple[nn.Linear, ...]  # (query, key, value), or (fused qkv,)
    head_dim: int
    # parameters with one entry per head in their last dimension (Swin's relative position bias table):
    # (full parameter name, owning module, attribute)
    per_head: tuple[tuple[str, nn.Module, str], ...] = ()

    @property
    def fused(self) -> bool:
        return len(self.projections) == 1

    @property
    def num_heads(self) -> int:
        return self.projections[0].out_features // self.head_dim // (3 if self.fused else 1)

    @property
    def layout(self) -> HeadLayout:
        return HeadLayout(self.head_dim, 3 if self.fused else 1, self.per_head)


def head_layouts(attention: list[AttentionModule]) -> dict[nn.Module, HeadLayout]:
    """The head layout of every query/key/value projection (what the pruner needs to remove whole heads)."""
    return {p: a.layout for a in attention for p in a.projections}


def find_attention_modules(model: nn.Module) -> list[AttentionModule]:
    """Every self-attention module of ``model``; raises for what head pruning cannot handle.

    Decoders and cross-attention raise :class:`UnsupportedModuleError` (keys/values from another sequence or a
    cache would need their own coupling), as does an attention module with neither separate q/k/v projections nor
    one fused ``[3·H·d, C]`` projection.
    """
    config = getattr(model, "config", None)
    if config is not None and (getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False)
                               or getattr(config, "is_encoder_decoder", False)):
        raise UnsupportedModuleError("", model, "decoders and cross-attention are not supported; only the "
                                                "self-attention heads of encoders can be pruned")
    found = []
    for path, m in model.named_modules():
        if getattr(m, "is_cross_attention", False) or path.rsplit(".", 1)[-1] in ("crossattention", "cross_attn"):
            raise UnsupportedModuleError(path, m, "cross-attention is not supported")
        if getattr(m, "is_causal", None) is True:  # 🤗 decoders (Llama, GPT-2, ...) mark their attention so
            raise UnsupportedModuleError(path, m, "causal (decoder) self-attention is not supported: decoder LLMs "
                                                  "cannot be pruned yet; only the self-attention heads of encoders")
        heads = next((getattr(m, a) for a in HEAD_COUNT_ATTRS if isinstance(getattr(m, a, None), int)), None)
        head_dim = next((getattr(m, a) for a in HEAD_SIZE_ATTRS if isinstance(getattr(m, a, None), int)), None)
        scale = getattr(m, "scale", None)
        if head_dim is None and heads and isinstance(scale, float) and scale > 0:
            head_dim = round(scale ** -2)  # timm's WindowAttention keeps only the scale 1/sqrt(head_dim)
            if not _fused_projections(m, heads, head_dim):
                continue
        if head_dim is None or heads is None:
            continue
        names = next((n for n in QKV_NAMES if all(isinstance(getattr(m, p, None), nn.Linear) for p in n)), None)
        if names is not None:
            projections = tuple(getattr(m, p) for p in names)
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
    for a in found:  # per-head tables: in the attention module, or beside it in its layer (🤗 BEiT)
        parent = a.path.rpartition(".")[0]
        alone = sum(b.path.startswith(f"{parent}.") or not parent for b in found) == 1
        scope, prefix = (model.get_submodule(parent), parent) if alone else (a.module, a.path)
        a.per_head = tuple((".".join(x for x in (prefix, sub, n) if x), owner, n)
                           for sub, owner in scope.named_modules() if not isinstance(owner, _LAYERS)
                           for n, p in owner.named_parameters(recurse=False) if p.dim() and p.shape[-1] == a.num_heads)
    return found


_LAYERS = (nn.Linear, nn.modules.conv._ConvNd, nn.LayerNorm, nn.Embedding, nn.modules.batchnorm._BatchNorm)


def _fused_projections(m: nn.Module, heads: int, head_dim: int) -> list[nn.Linear]:
    return [c for c in m.children() if isinstance(c, nn.Linear) and c.out_features == 3 * heads * head_dim]


def sync_head_counts(attention: list[AttentionModule]) -> dict[str, int]:
    """After pruning: set each module's head count (and ``all_head_size`` / ``attn_dim``) from its projections'
    widths."""
    counts = {}
    for a in attention:
        n = a.num_heads
        for attr in HEAD_COUNT_ATTRS:
            if hasattr(a.module, attr):
                setattr(a.module, attr, n)
        for attr in HEAD_TOTAL_ATTRS:
            if hasattr(a.module, attr):
                setattr(a.module, attr, n * a.head_dim)
        counts[a.path] = n
    return counts
