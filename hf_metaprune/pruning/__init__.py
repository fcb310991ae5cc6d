"""Structured pruning primitives every method shares: coupled channel groups, cost (MACs, latency), pruning to a
target speed-up (channels, MLP neurons, attention heads), and pruned-model save/load."""
from ..graph.attention import AttentionModule, find_attention_modules
from .batchnorm import recalibrate_batchnorm, recalibration_batches
from .cost import count_macs_and_params, measure_latency
from .groups import ChannelGroups, sparsity_penalty
from .latency import LatencyTable
from .pretrained import attach_pruned_config, pruned_model_class
from .serialization import load_pruned, save_pruned
from .speedup import IMPORTANCES, PruneResult, module_widths, prune_to_speedup, prune_to_widths, prune_units

__all__ = ["IMPORTANCES", "AttentionModule", "ChannelGroups", "LatencyTable", "PruneResult", "attach_pruned_config",
           "count_macs_and_params", "find_attention_modules", "load_pruned", "measure_latency", "module_widths",
           "prune_to_speedup", "prune_to_widths", "prune_units", "pruned_model_class", "recalibrate_batchnorm",
           "recalibration_batches", "save_pruned", "sparsity_penalty"]
