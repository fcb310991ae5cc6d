"""Structured pruning to a target speed-up, and pruned-model save/load."""
from .serialization import load_pruned, save_pruned
from .speedup import (IMPORTANCES, PruneResult, count_macs_and_params, measure_latency, module_widths,
                      prune_to_speedup)

__all__ = ["IMPORTANCES", "PruneResult", "count_macs_and_params", "measure_latency", "module_widths",
           "prune_to_speedup", "load_pruned", "save_pruned"]
