"""Configuration of GraphPruning (Zhang et al., "Graph Pruning for Model Compression", Applied Intelligence 2022)."""
from __future__ import annotations

from ..pruningnet.configuration import PruningNetConfig


class GraphPruningConfig(PruningNetConfig):
    """A PruningNet whose generators read graph embeddings of the layer graph instead of local width ratios.

    Args (besides :class:`~hf_metaprune.PruningNetConfig`'s):
        gcn_hidden_size: width of the GCN aggregator's node embeddings (64 in the reconstruction we follow).
        gcn_layers: graph-convolution layers (2).
    """

    model_type = "graphpruning"

    def __init__(self, gcn_hidden_size: int = 64, gcn_layers: int = 2, **kwargs):
        for name, value in (("gcn_hidden_size", gcn_hidden_size), ("gcn_layers", gcn_layers)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"GraphPruningConfig: {name} must be a positive int, got {value!r}")
        self.gcn_hidden_size = gcn_hidden_size
        self.gcn_layers = gcn_layers
        super().__init__(**kwargs)
