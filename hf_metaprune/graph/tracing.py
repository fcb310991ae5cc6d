"""Discover the channel spaces of a network by tracing it with Torch-Pruning's dependency graph.

A *channel space* (node set) is a set of feature-map channels that must be pruned together: the output
channels of a conv and its BN, or every channel that a residual connection sums. Torch-Pruning's
``DependencyGraph`` finds exactly this coupling by tracing autograd, so we reuse its groups instead of
reading state_dict order or writing per-architecture converters.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

ROOT_MODULE_TYPES = (nn.modules.conv._ConvNd, nn.Linear)


@dataclass
class ChannelSpaces:
    """Where every pruned dimension of every module lives in the node space.

    ``dims[(name, "in" | "out")]`` is a LongTensor giving, for each index of that dimension, the node id.
    ``params[name]`` does the same for unwrapped 1-D parameters (e.g. ConvNeXt's layer-scale ``gamma``).
    """

    num_nodes: int
    set_names: list[str]
    set_of_node: torch.Tensor
    dims: dict[tuple[str, str], torch.Tensor] = field(default_factory=dict)
    params: dict[str, torch.Tensor] = field(default_factory=dict)
    consumed_sets: set[int] = field(default_factory=set)

    def add_set(self, name: str, size: int) -> torch.Tensor:
        start = self.num_nodes
        self.num_nodes += size
        self.set_of_node = torch.cat([self.set_of_node, torch.full((size,), len(self.set_names), dtype=torch.long)])
        self.set_names.append(name)
        return torch.arange(start, start + size)


def build_dependency_graph(model: nn.Module, example_inputs: Any) -> tp.DependencyGraph:
    """Trace ``model`` in eval mode (so tracing never updates BN statistics) and restore its mode.

    Torch-Pruning traces through autograd, so frozen parameters are unfrozen for the trace and refrozen after.
    """
    was_training = model.training
    frozen = [p for p in model.parameters() if not p.requires_grad]
    model.eval()
    try:
        for p in frozen:
            p.requires_grad_(True)
        with torch.enable_grad():
            return tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)
    finally:
        model.train(was_training)
        for p in frozen:
            p.requires_grad_(False)


def trace_channel_spaces(model: nn.Module, example_inputs: Any, dg: tp.DependencyGraph | None = None) -> ChannelSpaces:
    dg = dg if dg is not None else build_dependency_graph(model, example_inputs)
    module_names = {m: n for n, m in model.named_modules()}
    spaces = ChannelSpaces(num_nodes=0, set_names=[], set_of_node=torch.zeros(0, dtype=torch.long))
    for group in dg.get_all_groups(root_module_types=ROOT_MODULE_TYPES):
        root = group[0]
        root_name = module_names.get(root.dep.target.module, str(root.dep.target.name))
        nodes = spaces.add_set(root_name, len(root.idxs))
        set_id = len(spaces.set_names) - 1
        for item in group:
            target = item.dep.target.module
            if item.root_idxs is None or any(r is None for r in item.root_idxs):
                raise ValueError(f"cannot map channels of {root_name}: Torch-Pruning lost the root indices")
            idxs = torch.as_tensor(item.idxs, dtype=torch.long)
            node_ids = nodes[torch.as_tensor(item.root_idxs, dtype=torch.long)]
            if isinstance(target, nn.Parameter):  # Torch-Pruning prunes a loose parameter's last dimension
                key, store, size = dg._param_to_name[target], spaces.params, target.shape[-1]
            elif target in module_names and any(True for _ in target.parameters(recurse=False)):
                is_out = dg.is_out_channel_pruning_fn(item.dep.handler)
                key, store = (module_names[target], "out" if is_out else "in"), spaces.dims
                size = channel_dim_size(target, is_out)
                if not is_out:
                    spaces.consumed_sets.add(set_id)
            else:
                continue  # parameter-free ops (add, relu, reshape, pooling) carry no weights
            mapping = store.setdefault(key, torch.full((size,), -1, dtype=torch.long))
            mapping[idxs] = node_ids
            if _is_depthwise(target):  # Torch-Pruning merges a depthwise conv's input and output channels
                spaces.dims[(key[0], "in")] = mapping
                spaces.consumed_sets.add(set_id)
    return spaces


def _is_depthwise(module) -> bool:
    return isinstance(module, nn.modules.conv._ConvNd) and module.groups == module.out_channels > 1 \
        and module.in_channels == module.out_channels


def channel_dim_size(module: nn.Module, is_out: bool) -> int:
    """Width of a module's output (``is_out``) or input channel dimension; 0 for a module with no tensors."""
    if isinstance(module, nn.modules.conv._ConvNd):
        return module.out_channels if is_out else module.in_channels
    if isinstance(module, nn.Linear):
        return module.out_features if is_out else module.in_features
    if isinstance(module, nn.Embedding):  # rows are tokens (inputs); the channels are the embedding dimension
        return module.embedding_dim
    weight = getattr(module, "weight", None)
    if weight is None:
        weight = next(iter(module.parameters(recurse=False)), None)
    if weight is None:
        return 0
    return int(weight.shape[0] if is_out else weight.shape[-1])
