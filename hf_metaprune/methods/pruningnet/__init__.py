"""MetaPruning (Liu et al., ICCV 2019): a PruningNet that generates the weights of any pruned structure, trained by
stochastic structure sampling, and an evolutionary search for the best structure under a MACs budget."""
from transformers import TrainingArguments

from ..mapping import register_method
from .configuration import PUBLISHED_WIDTH_RATIOS, PruningNetConfig
from .modeling import PruningNetModel, WeightGenerator
from .search import SearchResult, evolutionary_search, sample_genes
from .trainer import PruningNetTrainer

register_method("pruningnet", PruningNetConfig, PruningNetModel, PruningNetTrainer, TrainingArguments)

__all__ = ["PUBLISHED_WIDTH_RATIOS", "PruningNetConfig", "PruningNetModel", "PruningNetTrainer", "SearchResult",
           "WeightGenerator", "evolutionary_search", "sample_genes"]
