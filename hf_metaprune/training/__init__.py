"""Meta-training and finetuning: data-model zoo, objective, MetaPrunerTrainer, finetuning, the full pipeline."""
from .finetune import ClassifierTrainer, FinetuneResult, classifier_logits, evaluate_accuracy, finetune
from .metapruner_trainer import MetaPrunerTrainer, MetaPrunerTrainingArguments
from .objectives import ChannelGroups, group_norm_stats, sparsity_penalty
from .pipeline import PipelineResult, PrePruneResult, pre_prune, prune_and_finetune
from .zoo import DataModelZoo, train_zoo

__all__ = ["ChannelGroups", "ClassifierTrainer", "DataModelZoo", "FinetuneResult", "MetaPrunerTrainer",
           "MetaPrunerTrainingArguments", "PipelineResult", "PrePruneResult", "classifier_logits", "evaluate_accuracy", "finetune", "group_norm_stats",
           "pre_prune", "prune_and_finetune", "sparsity_penalty", "train_zoo"]
