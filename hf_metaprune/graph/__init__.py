"""Network ↔ graph: nodes are channels, edges are weight slices, records are per-channel tensors."""
from .attention import AttentionModule, find_attention_modules
from .errors import UnsupportedModuleError
from .kinds import DEFAULT_EDGE_KINDS, NODE_KINDS, NodeKind, edge_kind_size
from .network_graph import (
    ROLE_HIDDEN,
    ROLE_INPUT,
    ROLE_OUTPUT,
    EdgeSet,
    NetworkGraph,
    RecordSet,
    Slot,
    graph_to_model,
    model_to_graph,
)
from .tracing import build_dependency_graph, trace_channel_spaces

__all__ = [
    "DEFAULT_EDGE_KINDS", "NODE_KINDS", "NodeKind", "edge_kind_size", "ROLE_HIDDEN", "ROLE_INPUT", "ROLE_OUTPUT",
    "EdgeSet", "NetworkGraph", "RecordSet", "Slot", "UnsupportedModuleError", "graph_to_model", "model_to_graph",
    "build_dependency_graph", "trace_channel_spaces", "AttentionModule", "find_attention_modules",
]
