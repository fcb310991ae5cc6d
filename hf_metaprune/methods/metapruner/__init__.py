"""The graph metanetwork: configuration, model, model card, meta-training objective and trainer."""
from ..mapping import register_method
from .configuration import MetaPrunerConfig
from .modeling import MetaPrunerModel
from .objectives import group_norm_stats, task_loss
from .trainer import MetaPrunerTrainer, MetaPrunerTrainingArguments, MetaTrainResult, meta_train

register_method("metapruner", MetaPrunerConfig, MetaPrunerModel, MetaPrunerTrainer, MetaPrunerTrainingArguments)

__all__ = ["MetaPrunerConfig", "MetaPrunerModel", "MetaPrunerTrainer", "MetaPrunerTrainingArguments",
           "MetaTrainResult", "group_norm_stats", "meta_train", "task_loss"]
