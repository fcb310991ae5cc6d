"""GraphPruning (Zhang et al., Applied Intelligence 2022): a PruningNet whose generators read GCN embeddings of the
layer graph, trained by stochastic structure sampling (MetaPruning's trainer), searched by DDPG (AMC's protocol)."""
from transformers import TrainingArguments

from ..mapping import register_method
from ..pruningnet.trainer import PruningNetTrainer
from .configuration import GraphPruningConfig
from .modeling import GCNAggregator, GraphPruningModel
from .search import DDPGAgent, clip_action, ddpg_search

register_method("graphpruning", GraphPruningConfig, GraphPruningModel, PruningNetTrainer, TrainingArguments)

__all__ = ["DDPGAgent", "GCNAggregator", "GraphPruningConfig", "GraphPruningModel", "clip_action", "ddpg_search"]
