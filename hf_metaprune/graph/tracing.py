"""Discover the channel spaces of a network by tracing it with Torch-Pruning's dependency graph.

A *channel space* (node set) is a set of feature-map channels that must be pruned together: the output
channels of a conv and its BN, or every channel that a residual connection sums. Torch-Pruning's
``DependencyGraph`` finds exactly this coupling by tracing autograd, so we reuse its groups instead of
reading state_dict order or writing per-architecture converters.
"""
from __future__ import annotations

import inspect
import types
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from torch.func import functional_call
from torch.nn.utils import parametrize
from transformers import PreTrainedModel

from .attention import AttentionModule, find_attention_modules
from .errors import UnsupportedModuleError

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

    def merge_nodes(self, remap: torch.Tensor) -> None:
        """Relabel every mapped dimension by ``remap`` (old node id -> new node id, ``arange`` where unchanged) and
        drop the nodes nothing maps to any more."""
        stores = (self.dims, self.params)
        used = torch.zeros(self.num_nodes, dtype=torch.bool)
        for store in stores:
            for nodes in store.values():
                used[remap[nodes[nodes >= 0]]] = True
        new_id = (torch.cumsum(used, 0) - 1)[remap]  # old id -> id after the merge, orphans dropped
        for store in stores:
            for key, nodes in store.items():
                store[key] = torch.where(nodes >= 0, new_id[nodes.clamp(min=0)], nodes)  # -1: untraced
        self.set_of_node, self.num_nodes = self.set_of_node[used], int(used.sum())

    def drop_empty_sets(self) -> None:
        """Renumber the node sets so that every set holds nodes (after merges emptied some)."""
        kept = torch.unique(self.set_of_node).tolist()
        new_id = {old: new for new, old in enumerate(kept)}
        self.set_names = [self.set_names[s] for s in kept]
        self.set_of_node = torch.tensor([new_id[s] for s in self.set_of_node.tolist()], dtype=torch.long)
        self.consumed_sets = {new_id[s] for s in self.consumed_sets if s in new_id}


class _InstanceNormPruner(tp.pruner.function.InstanceNormPruner):
    """Torch-Pruning's InstanceNorm pruner, plus the running statistics it leaves at full width."""

    def prune_out_channels(self, layer: nn.Module, idxs) -> nn.Module:
        keep = sorted(set(range(layer.num_features)) - set(idxs))
        super().prune_out_channels(layer, idxs)
        for name in ("running_mean", "running_var"):
            if getattr(layer, name, None) is not None:
                setattr(layer, name, getattr(layer, name)[keep].clone())
        return layer

    prune_in_channels = prune_out_channels


CUSTOMIZED_PRUNERS = {cls: _InstanceNormPruner() for cls in (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)}


def check_example_inputs(model: nn.Module, example_inputs: Any) -> None:
    """Fail early, naming the argument, on example inputs that cannot be traced through ``model``.

    Structure first (a tensor, a tuple of tensors, or a dict of keyword tensors; a non-empty batch; the
    model's floating dtype), then one forward pass whose failure is reported with the inputs' shapes.
    """
    if example_inputs is None:
        raise TypeError("example_inputs is None: expected a batch the model takes, e.g. torch.randn(1, 3, 224, 224), "
                        "a tuple of tensors, or a dict of keyword tensors such as {'input_ids': ...}")
    if isinstance(example_inputs, dict):
        tensors = list(example_inputs.values())
        params = inspect.signature(model.forward).parameters
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            unknown = sorted(set(example_inputs) - set(params))
            if unknown:
                raise ValueError(f"example_inputs has keys {unknown} that {type(model).__name__}.forward does not "
                                 f"take (it takes {list(params)})")
    elif isinstance(example_inputs, (tuple, list)):
        tensors = list(example_inputs)
    else:
        tensors = [example_inputs]
    for t in tensors:
        if not isinstance(t, torch.Tensor):
            hint = " (convert it with torch.from_numpy)" if type(t).__module__ == "numpy" else ""
            raise TypeError(f"example_inputs must be torch tensors, got {type(t).__name__}{hint}")
    if not tensors:
        raise ValueError("example_inputs is empty: expected at least one input tensor")
    first = tensors[0]
    if first.dim() == 0 or first.shape[0] == 0:
        raise ValueError(f"example_inputs must hold a batch of at least one example, got shape {tuple(first.shape)}")
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    for t in tensors:
        if t.is_floating_point() and dtype is not None and t.dtype != dtype:
            raise TypeError(f"example_inputs have dtype {t.dtype} but the model's parameters are {dtype}: convert "
                            f"one of them (e.g. inputs.to({dtype}) or model.to({t.dtype}))")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            call_model(model, example_inputs)
    except Exception as e:
        shapes = {k: (tuple(v.shape), str(v.dtype)) for k, v in example_inputs.items()} \
            if isinstance(example_inputs, dict) else [(tuple(t.shape), str(t.dtype)) for t in tensors]
        raise ValueError(f"example_inputs {shapes} do not run through {type(model).__name__}: "
                         f"{type(e).__name__}: {e}") from e
    finally:
        model.train(was_training)


def call_model(model: nn.Module, example_inputs: Any):
    """``model(x)``, ``model(*inputs)`` or ``model(**inputs)``, as the inputs' type says."""
    if isinstance(example_inputs, dict):
        return model(**example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return model(*example_inputs)
    return model(example_inputs)


def classifier_logits(model: nn.Module, inputs: dict[str, torch.Tensor],
                      params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Logits of ``model`` on a batch (a ``labels`` entry is ignored): 🤗 models take the batch as keyword arguments
    and return an output with ``.logits``; plain classifiers take the one input tensor. ``params`` swaps in other
    weights (``torch.func.functional_call``), as meta-training does."""
    inputs = {k: v for k, v in inputs.items() if k != "labels"}
    if isinstance(model, PreTrainedModel):
        args, kwargs = (), inputs
    else:
        args, kwargs = (next(iter(inputs.values())),), {}
    out = model(*args, **kwargs) if params is None else functional_call(model, params, args, kwargs)
    return getattr(out, "logits", out)


def check_supported_modules(model: nn.Module) -> None:
    """Refuse, before any work starts, layers whose weights pruning cannot keep consistent.

    Weight and spectral norm rebuild ``weight`` from other tensors on every forward; pruning the visible weight
    would be undone (or crash) on the next call, so they have to be folded into the weight first. A conv or
    linear layer with extra per-channel parameters (timm's ``ScaledStdConv2d`` gain) would be left inconsistent.
    """
    for path, m in model.named_modules():
        hooks = [type(h).__name__ for h in m._forward_pre_hooks.values()]
        if parametrize.is_parametrized(m) or any(h in ("WeightNorm", "SpectralNorm") for h in hooks):
            raise UnsupportedModuleError(path, m, "its weight is parametrized (weight norm, spectral norm or "
                                                  "another parametrization); fold it into a plain weight first, "
                                                  "e.g. torch.nn.utils.parametrize.remove_parametrizations(module, "
                                                  "'weight') or torch.nn.utils.remove_weight_norm(module)")
        if isinstance(m, ROOT_MODULE_TYPES):
            extra = [n for n, _ in m.named_parameters(recurse=False) if n not in ("weight", "bias")]
            if extra:  # e.g. timm's ScaledStdConv2d gain: a per-channel tensor nobody prunes with the weight
                raise UnsupportedModuleError(path, m, f"it holds parameters {extra} besides weight and bias, which "
                                                      "structured pruning cannot keep in step with its channels")


def build_dependency_graph(model: nn.Module, example_inputs: Any) -> tp.DependencyGraph:
    """Trace ``model`` in eval mode (so tracing never updates BN statistics) and restore its mode.

    Torch-Pruning traces through autograd, so frozen parameters are unfrozen for the trace and refrozen after.
    Per-head tables (a relative position bias, ``[..., heads]``) are the opposite: indexed by head, not by channel,
    and added to the attention scores through reshapes Torch-Pruning would misread as channel mappings, so they are
    left out of the trace (no gradient) and the pruner slices them itself. Decoder attention is traced as
    ``output(query(x))`` (see :func:`_queries_to_output`).
    Example inputs and modules are checked first, so bad input gets an error naming it, not a trace failure.
    """
    check_supported_modules(model)
    check_example_inputs(model, example_inputs)
    attention = find_attention_modules(model)
    per_head = [getattr(m, n) for a in attention for _, m, n in a.per_head]
    untraced = {id(p) for p in per_head}
    decoder = [a for a in attention if a.causal]
    inputs, output_transform = _decoder_trace_inputs(model, example_inputs) if decoder else (example_inputs, None)
    was_training = model.training
    frozen = {id(p) for p in model.parameters() if not p.requires_grad}
    model.eval()
    try:
        for p in model.parameters():
            p.requires_grad_(id(p) not in untraced)
        with torch.enable_grad(), _queries_to_output(decoder):
            return tp.DependencyGraph().build_dependency(model, example_inputs=inputs,
                                                         output_transform=output_transform,
                                                         customized_pruners=CUSTOMIZED_PRUNERS,
                                                         ignored_params=per_head or None)
    finally:
        model.train(was_training)
        for p in model.parameters():
            p.requires_grad_(id(p) not in frozen)


def _decoder_trace_inputs(model: nn.Module, example_inputs: Any) -> tuple[Any, Any]:
    """A causal LM traces without its KV cache (not a tensor), from its logits."""
    if isinstance(example_inputs, dict) and "use_cache" in inspect.signature(model.forward).parameters:
        example_inputs = {**example_inputs, "use_cache": False}
    return example_inputs, lambda out: getattr(out, "logits", out)


@contextmanager
def _queries_to_output(attention: list[AttentionModule]):
    """Decoder attention as the tracer should see it: ``output(query(x))``. Rotary embeddings (which Torch-Pruning's
    group search cannot get through) and the key/value heads shared by several query heads (which it maps onto the
    wrong channels) stay out of the trace; keys and values follow the queries (see :class:`HeadLayout`)."""
    def forward(self, hidden_states, *args, **kwargs):
        a = modules[self]
        return a.output(a.projections[0](hidden_states)), None

    modules = {a.module: a for a in attention}
    own = {m: m.__dict__["forward"] for m in modules if "forward" in m.__dict__}  # e.g. accelerate's hooks
    for m in modules:
        m.forward = types.MethodType(forward, m)
    try:
        yield
    finally:
        for m in modules:
            if m in own:
                m.forward = own[m]
            else:
                del m.forward


def trace_channel_spaces(model: nn.Module, example_inputs: Any, dg: tp.DependencyGraph | None = None) -> ChannelSpaces:
    dg = dg if dg is not None else build_dependency_graph(model, example_inputs)
    module_names = {m: n for n, m in model.named_modules()}
    spaces = ChannelSpaces(num_nodes=0, set_names=[], set_of_node=torch.zeros(0, dtype=torch.long))
    for group in dg.get_all_groups(root_module_types=ROOT_MODULE_TYPES):
        _add_group(spaces, dg, group, module_names)
    # a space no conv / linear produces (ALBERT's factorised embedding: embeddings -> LayerNorm -> a projection up to
    # the hidden width): traced from the embedding that produces it
    for m, name in module_names.items():
        if isinstance(m, nn.Embedding) and (name, "out") not in spaces.dims and m in dg.module2node:
            pruner = dg.get_pruner_of_module(m)
            _add_group(spaces, dg, dg.get_pruning_group(m, pruner.prune_out_channels, list(range(m.embedding_dim))),
                       module_names)
    _fill_from_producers(spaces, dg, module_names)
    return spaces


def _add_group(spaces: ChannelSpaces, dg: tp.DependencyGraph, group, module_names: dict) -> None:
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
            if size == 1 < len(root.idxs) and isinstance(target, nn.PReLU):
                continue  # one slope shared by every channel: not a per-channel tensor
            if not is_out:
                spaces.consumed_sets.add(set_id)
        else:
            continue  # parameter-free ops (add, relu, reshape, pooling) carry no weights
        mapping = store.setdefault(key, torch.full((size,), -1, dtype=torch.long))
        if len(idxs) and int(idxs.max()) >= size:
            raise UnsupportedModuleError(root_name, root.dep.target.module,
                                         "Torch-Pruning's dependency graph maps its channels beyond the width of "
                                         f"'{key if isinstance(key, str) else key[0]}' (a split or concatenation "
                                         "of channel ranges it does not model)")
        mapping[idxs] = node_ids
        if _is_depthwise(target):  # Torch-Pruning merges a depthwise conv's input and output channels
            spaces.dims[(key[0], "in")] = mapping
            spaces.consumed_sets.add(set_id)


def _fill_from_producers(spaces: ChannelSpaces, dg: tp.DependencyGraph, module_names: dict) -> None:
    """Input channels Torch-Pruning could not map: a linear layer (or a norm) reading ``k`` copies of one channel
    space side by side — Dinov2's classifier ([class token, patch mean]), Swin's patch merging (four strided
    neighbours concatenated). Walking back from the layer through parameter-free ops to the layers that produce its
    input: when they all produce one fully traced space of ``C`` channels and the width is ``k·C``, the input is
    those channels ``k`` times, position-major (the layout a concatenation, or flattening a ``[..., k, C]`` tensor,
    gives)."""
    for m, name in module_names.items():
        key = (name, "in") if isinstance(m, nn.Linear) else (name, "out") if isinstance(m, nn.LayerNorm) else None
        width = channel_dim_size(m, key[1] == "out") if key else 0
        nodes = spaces.dims.get(key) if key else None
        if not width or m not in dg.module2node or (nodes is not None and not (nodes < 0).any()):
            continue
        producers, frontier, seen = set(), list(dg.module2node[m].inputs), set()
        while frontier and len(seen) < 10000:
            node = frontier.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            produced = spaces.dims.get((module_names.get(node.module), "out"))
            if produced is not None and not (produced < 0).any():
                producers.add(tuple(produced.tolist()))
            else:
                frontier.extend(node.inputs)
        if len(producers) == 1:
            base = torch.tensor(next(iter(producers)))
            if width % base.numel() == 0:
                spaces.dims[key] = base.repeat(width // base.numel())


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


def device_of(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (CPU for a model without parameters)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")
