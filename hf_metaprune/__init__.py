"""hf_metaprune: meta-learned structured pruning with graph metanetworks, Hugging Face style."""
from . import models  # registers the CIFAR models with timm
from .graph import NetworkGraph, UnsupportedModuleError, graph_to_model, model_to_graph
from .pruning import (ChannelGroups, PruneResult, count_macs_and_params, load_pruned, prune_to_speedup, prune_to_widths,
                      save_pruned)
from .data import load_image_classification, load_text_classification
from .env import library_versions
from .training import DataModelZoo, finetune, prune_and_finetune, train_zoo
from .methods import get_method
from .methods.metapruner import MetaPrunerConfig, MetaPrunerModel, MetaPrunerTrainer, MetaPrunerTrainingArguments
from .methods.pruningnet import PruningNetConfig, PruningNetModel, PruningNetTrainer

__version__ = "0.1.0"

__all__ = [
    "ChannelGroups",
    "DataModelZoo",
    "MetaPrunerConfig",
    "MetaPrunerModel",
    "MetaPrunerTrainer",
    "MetaPrunerTrainingArguments",
    "NetworkGraph",
    "PruneResult",
    "PruningNetConfig",
    "PruningNetModel",
    "PruningNetTrainer",
    "UnsupportedModuleError",
    "count_macs_and_params",
    "finetune",
    "get_method",
    "graph_to_model",
    "library_versions",
    "load_image_classification",
    "load_text_classification",
    "load_pruned",
    "model_to_graph",
    "prune_and_finetune",
    "prune_to_speedup",
    "prune_to_widths",
    "save_pruned",
    "train_zoo",
]
