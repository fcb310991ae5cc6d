"""Typed feature kinds of the network graph.

Edges carry weight slices (one kind per kernel shape, so a 7×7 stem, 3×3 and 1×1 convs each get their own
encoder/decoder and nothing is padded or dropped). Node *records* carry per-channel parameters; a channel
can hold several records (e.g. every BN whose output a residual connection sums).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NodeKind:
    columns: tuple[str, ...]
    trainable: tuple[bool, ...]  # buffers (running statistics) are inputs only: the metanetwork never edits them
    log_scale: tuple[bool, ...] = ()  # columns fed to the encoder as log(x), e.g. running variances

    def __post_init__(self):
        if not self.log_scale:
            object.__setattr__(self, "log_scale", (False,) * len(self.columns))


NODE_KINDS: dict[str, NodeKind] = {
    "batchnorm": NodeKind(("weight", "bias", "running_mean", "running_var"), (True, True, False, False),
                          (False, False, False, True)),
    "running_stats": NodeKind(("running_mean", "running_var"), (False, False), (False, True)),
    "affine": NodeKind(("weight", "bias"), (True, True)),
    "scale": NodeKind(("weight",), (True,)),
    "bias": NodeKind(("bias",), (True,)),
}

DEFAULT_EDGE_KINDS = ("1x1", "2x2", "3x3", "4x4", "5x5", "7x7")
# one weight from an input node (token, position, segment, class token) to an embedding channel
EMBEDDING_EDGE_KIND = "embedding"


def edge_kind_for_kernel(kernel_size: tuple[int, ...]) -> str:
    """'3x3' for a 3×3 conv, '1x1' for linear layers and pointwise convs, 'k5' for a 1-D conv of width 5."""
    if len(kernel_size) == 1:
        return "1x1" if kernel_size[0] == 1 else f"k{kernel_size[0]}"
    return "x".join(str(k) for k in kernel_size)


def edge_kind_size(kind: str) -> int:
    """Number of features of an edge of this kind (the kernel area)."""
    if kind == EMBEDDING_EDGE_KIND:
        return 1
    if kind.startswith("flat"):
        return int(kind[4:])
    if kind.startswith("k"):
        return int(kind[1:])
    size = 1
    for k in kind.split("x"):
        size *= int(k)
    return size
