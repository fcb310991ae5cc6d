"""Training shared by every method: the data-model zoo, finetuning (with distillation or sparse learning) and the
full prune-and-finetune pipeline. A method's own trainer lives in its folder under ``methods/``."""
from .finetune import (ClassifierTrainer, FinetuneResult, classifier_logits, evaluate_accuracy,
                       evaluate_recalibrated, finetune, predict)
from .language_modeling import CausalLMTrainer, finetune_causal_lm, perplexity
from .pipeline import PipelineResult, PrePruneResult, pre_prune, prune_and_finetune
from .zoo import DataModelZoo, train_zoo

__all__ = ["CausalLMTrainer", "ClassifierTrainer", "DataModelZoo", "FinetuneResult", "PipelineResult",
           "PrePruneResult", "classifier_logits", "evaluate_accuracy", "evaluate_recalibrated", "finetune",
           "finetune_causal_lm", "perplexity", "pre_prune", "predict", "prune_and_finetune", "train_zoo"]
