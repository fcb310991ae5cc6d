"""Structured pruning to a target speed-up (channels, MLP neurons, attention heads), and pruned-model save/load."""
from ..graph.attention import AttentionModule, find_attention_modules
from .pretrained import attach_pruned_config, pruned_model_class
from .serialization import load_pruned, save_pruned
from .speedup import (IMPORTANCES, PruneResult, count_macs_and_params, measure_latency, module_widths,
                      prune_to_speedup)

__all__ = ["IMPORTANCES", "AttentionModule", "PruneResult", "attach_pruned_config", "count_macs_and_params",
           "find_attention_modules", "measure_latency", "module_widths", "prune_to_speedup", "pruned_model_class",
           "load_pruned", "save_pruned"]
