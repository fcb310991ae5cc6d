"""hf_metaprune: meta-learned structured pruning with graph metanetworks, Hugging Face style."""
from . import models  # registers the CIFAR models with timm
from .configuration_metapruner import MetaPrunerConfig
from .graph import NetworkGraph, UnsupportedModuleError, graph_to_model, model_to_graph
from .modeling_metapruner import MetaPrunerModel
from .pruning import PruneResult, count_macs_and_params, load_pruned, prune_to_speedup, save_pruned

__version__ = "0.1.0"

__all__ = [
    "MetaPrunerConfig",
    "MetaPrunerModel",
    "NetworkGraph",
    "PruneResult",
    "UnsupportedModuleError",
    "count_macs_and_params",
    "graph_to_model",
    "load_pruned",
    "model_to_graph",
    "prune_to_speedup",
    "save_pruned",
]
