"""hf_metaprune: meta-learned structured pruning with graph metanetworks, Hugging Face style."""
import warnings

# torch_geometric calls torch.jit.script at import; torch >= 2.9 warns on every import of hf_metaprune otherwise
warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated", category=FutureWarning)
from . import models  # registers the CIFAR models with timm
from .graph import NetworkGraph, UnsupportedModuleError, graph_to_model, model_to_graph
from .pruning import (ChannelGroups, LatencyTable, PruneResult, count_macs_and_params, load_pruned, measure_latency,
                      module_widths, prune_to_speedup, prune_to_widths, prune_units, save_pruned)
from .data import load_image_classification, load_text_classification, load_text_corpus
from .env import library_versions
from .training import (DataModelZoo, evaluate_accuracy, finetune, finetune_causal_lm, perplexity, prune_and_finetune,
                       train_zoo)
from .methods import get_method
from .methods.metapruner import (MetaPrunerConfig, MetaPrunerModel, MetaPrunerTrainer, MetaPrunerTrainingArguments,
                                 meta_train)
from .methods.pruningnet import PruningNetConfig, PruningNetModel, PruningNetTrainer
from .methods.graphpruning import GraphPruningConfig, GraphPruningModel
from .methods.stamp import STAMPConfig, STAMPModel, STAMPTrainer

__version__ = "0.1.0"

__all__ = [
    "ChannelGroups",
    "DataModelZoo",
    "GraphPruningConfig",
    "GraphPruningModel",
    "LatencyTable",
    "MetaPrunerConfig",
    "MetaPrunerModel",
    "MetaPrunerTrainer",
    "MetaPrunerTrainingArguments",
    "NetworkGraph",
    "PruneResult",
    "PruningNetConfig",
    "PruningNetModel",
    "PruningNetTrainer",
    "STAMPConfig",
    "STAMPModel",
    "STAMPTrainer",
    "UnsupportedModuleError",
    "count_macs_and_params",
    "evaluate_accuracy",
    "finetune",
    "finetune_causal_lm",
    "get_method",
    "graph_to_model",
    "library_versions",
    "load_image_classification",
    "load_text_classification",
    "load_text_corpus",
    "load_pruned",
    "measure_latency",
    "meta_train",
    "model_to_graph",
    "module_widths",
    "perplexity",
    "prune_and_finetune",
    "prune_to_speedup",
    "prune_to_widths",
    "prune_units",
    "save_pruned",
    "train_zoo",
]
