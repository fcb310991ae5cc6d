"""Pruning methods, one folder each, registered by name (see :mod:`.mapping`):

- ``metapruner``: the graph metanetwork (a GNN maps a trained network to an easier-to-prune one of the same
  architecture; Shi et al., "Structured Pruning via Meta-learned Graph Neural Networks").
- ``pruningnet``: MetaPruning (Liu et al., ICCV 2019): a PruningNet generates the weights of any pruned structure;
  an evolutionary search picks the structure.
- ``graphpruning``: GraphPruning (Zhang et al., 2022): the PruningNet's generators read GCN embeddings of the layer
  graph; a DDPG agent picks the structure.
- ``stamp``: STAMP (Song et al., 2020): a Set Transformer over a sample of a new task and per-group mask generators
  prune a reference backbone for that task before training on it.
"""
from .base import PruningMethodPreTrainedModel
from .mapping import METHODS, PruningMethod, get_method, register_method
from . import graphpruning, metapruner, pruningnet, stamp  # noqa: E402  (register themselves)

__all__ = ["METHODS", "PruningMethod", "PruningMethodPreTrainedModel", "get_method", "graphpruning", "metapruner",
           "pruningnet", "register_method", "stamp"]
