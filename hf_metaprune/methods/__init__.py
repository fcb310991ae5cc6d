"""Pruning methods, one folder each, registered by name (see :mod:`.mapping`):

- ``metapruner``: the graph metanetwork (a GNN maps a trained network to an easier-to-prune one of the same
  architecture; Shi et al., "Structured Pruning via Meta-learned Graph Neural Networks").
"""
from .mapping import METHODS, PruningMethod, get_method, register_method
from . import metapruner  # noqa: E402  (registers itself)

__all__ = ["METHODS", "PruningMethod", "get_method", "metapruner", "register_method"]
