"""MetaPruning's PruningNet: one weight generator per layer, conditioned on the widths of the layer's coupled groups,
so a single network yields usable weights for any pruned structure (a *gene*: one width index per coupled group).

Generic over architectures: the genes and the crop come from :class:`~hf_metaprune.ChannelGroups` (residual-tied
channels share one gene, a depthwise conv's input is its output), and "crop to the first ``c`` channels" is applied as
a mask of the removed units, which equals the cropped network exactly (:func:`~hf_metaprune.prune_to_widths` with
``keep="first"`` builds it). Each conv / linear weight is ``W_ℓ + FC2(ReLU(FC1([r_out, r_in])))``: the shared
``W_ℓ`` plays the paper's FC2 bias, so a PruningNet can start from a trained network's weights.
"""
from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, Any, Iterable

import timm
import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import ImageClassifierOutput

from ...graph.tracing import classifier_logits
from ...pruning import ChannelGroups, LatencyTable, PruneResult, prune_to_widths, recalibrate_batchnorm
from ..base import PruningMethodPreTrainedModel, copy_base_weights, timm_base
from .configuration import PruningNetConfig
from .model_card import pruningnet_model_card

if TYPE_CHECKING:
    from .search import SearchResult


class WeightGenerator(nn.Module):
    """``FC(context → H) → ReLU → FC(H → numel)``: the offset of one layer's weight for its context — its (out, in)
    width ratios (MetaPruning), or its groups' graph embeddings (GraphPruning)."""

    def __init__(self, numel: int, hidden: int, scale: float, context_size: int = 2):
        super().__init__()
        self.fc1 = nn.Linear(context_size, hidden)
        self.fc2 = nn.Linear(hidden, numel, bias=False)
        # |fc1 weights| <= 1/sqrt(2) and ratios in (0, 1]: a bias of 1.5 keeps every hidden unit active for every
        # context at the start (no generator starts dead); training bends them where the widths call for it
        nn.init.constant_(self.fc1.bias, 1.5)
        nn.init.normal_(self.fc2.weight, std=0.01 * scale / math.sqrt(hidden))  # offsets: ~1 % of W_ℓ's scale

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(context)))


class PruningNetModel(PruningMethodPreTrainedModel):
    """Generates the weights of any pruned structure of ``config.base_architecture``; :meth:`search` finds the best
    structure under a MACs budget and :meth:`generate` builds it as a plain pruned network."""

    config_class = PruningNetConfig
    base_model_prefix = "pruningnet"
    main_input_name = "pixel_values"
    checkpoint_noun = "PruningNet"
    context_size = 2  # a generator's input: the width ratios of its layer's output and input groups

    def __init__(self, config: PruningNetConfig):
        super().__init__(config)
        if not config.base_architecture:
            raise ValueError("PruningNetModel: config.base_architecture must name a timm model (e.g. "
                             "'cifar_resnet20'); use PruningNetModel.from_network(model, example_inputs) to start from "
                             "a network")
        try:
            self.network = timm.create_model(config.base_architecture, pretrained=False, **config.base_model_kwargs)
        except RuntimeError as e:  # timm: "Unknown model"
            raise ValueError(f"PruningNetModel: base_architecture '{config.base_architecture}' is not a timm model "
                             f"({e})") from e
        self.generated = [n for n, p in self.network.named_parameters() if p.dim() >= 2]  # conv / linear weights
        shapes = dict(self.network.named_parameters())
        self.generators = nn.ModuleDict({
            _key(n): WeightGenerator(shapes[n].numel(), config.hidden_size,
                                     math.sqrt(2.0 / max(1, math.prod(shapes[n].shape[1:]))), self.context_size)
            for n in self.generated})
        self._structure: tuple[ChannelGroups, torch.Tensor] | None = None
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        pass  # the network keeps timm's initialisation (or the weights it started from); generators set their own

    @classmethod
    def from_network(cls, model: nn.Module, hidden_size: int = 32, **config_kwargs) -> "PruningNetModel":
        """A PruningNet whose shared weights start from ``model`` (a timm model, e.g. a trained base network)."""
        architecture, kwargs = timm_base(model, f"{cls.__name__}.from_network")
        config = cls.config_class(base_architecture=architecture, base_model_kwargs=kwargs, hidden_size=hidden_size,
                                  **config_kwargs)
        pruningnet = cls(config)
        copy_base_weights(pruningnet.network, model, f"{cls.__name__}.from_network")
        return pruningnet

    def model_card(self, repo_id: str | None = None):
        return pruningnet_model_card(self.config, repo_id, tags=("metapruning",))

    # ---- structure -------------------------------------------------------------------------------------------
    def example_inputs(self, batch_size: int = 1) -> torch.Tensor:
        return torch.zeros(batch_size, *self.config.input_shape, device=self.device)

    @property
    def groups(self) -> ChannelGroups:
        """The coupled groups of the base architecture: gene ``g`` sets the width of group ``g``."""
        return self._traced()[0]

    @property
    def num_genes(self) -> int:
        return self.groups.num_groups

    def _traced(self) -> tuple[ChannelGroups, torch.Tensor]:
        if self._structure is None:  # traced on first use (from_pretrained builds the model on the meta device)
            groups = ChannelGroups.from_model(self.network, self.example_inputs())
            context = torch.full((len(self.generated), 2), groups.num_groups, dtype=torch.long)  # index: ratio 1
            row = {n: i for i, n in enumerate(self.generated)}
            for s in groups.slices:
                if s.param in row and s.dim in (0, 1):
                    context[row[s.param], s.dim] = groups.group_of_unit[s.unit[0]]
            self._structure = (groups, context)
        return self._structure

    def check_gene(self, gene: Iterable[int]) -> list[int]:
        """``gene`` as a list of grid indices, one per coupled group, or a ValueError saying what is wrong."""
        if isinstance(gene, torch.Tensor):
            gene = gene.tolist()
        gene = list(gene)
        top = len(self.config.width_ratios) - 1
        if len(gene) != self.num_genes or not all(isinstance(g, int) and not isinstance(g, bool) and 0 <= g <= top
                                                  for g in gene):
            raise ValueError(f"a gene holds {self.num_genes} indices into width_ratios (0..{top}), one per coupled "
                             f"group; got {gene!r}")
        return gene

    def full_gene(self) -> list[int]:
        return [len(self.config.width_ratios) - 1] * self.num_genes

    def widths(self, gene: Iterable[int]) -> list[int]:
        ratios = [self.config.width_ratios[i] for i in self.check_gene(gene)]
        return self.groups.widths_for_ratios(ratios, self.config.round_to)

    def macs(self, gene: Iterable[int]) -> float:
        """MACs of the pruned network a gene describes (no network is built: microseconds)."""
        return self.groups.macs(self.groups.removed_for_widths(self.widths(gene)))

    def cost(self, gene: Iterable[int], latency_table: LatencyTable | None = None) -> float:
        """What the searches constrain: :meth:`macs`, or the seconds a :class:`~hf_metaprune.LatencyTable` measured
        on the base network estimates for the gene's pruned network."""
        if latency_table is None:
            return self.macs(gene)
        return self.groups.latency(self.groups.removed_for_widths(self.widths(gene)), latency_table)

    # ---- weights ---------------------------------------------------------------------------------------------
    def generate_params(self, gene: Iterable[int] | None = None) -> dict[str, torch.Tensor]:
        """Every parameter and buffer of the base network (by name) for ``gene`` (``None``: full width), with the
        removed units zeroed, as ``torch.func.functional_call`` takes them; differentiable in the generators."""
        gene = self.full_gene() if gene is None else self.check_gene(gene)
        groups = self.groups
        contexts = self.layer_contexts(gene)
        params = {**dict(self.network.named_parameters()), **dict(self.network.named_buffers())}
        for i, name in enumerate(self.generated):
            base = params[name]
            params[name] = base + self.generators[_key(name)](contexts[i].to(base.dtype)).view_as(base)
        keep = (~groups.removed_for_widths(self.widths(gene))).float()
        return groups.apply_mask(params, keep)

    def layer_contexts(self, gene: list[int]) -> torch.Tensor:
        """``[generated layers, context_size]``: each layer's (output, input) group width ratios (1 for a side no
        group prunes: the image channels, the classes)."""
        ratios = torch.tensor([self.config.width_ratios[i] for i in gene] + [1.0], device=self.device)
        return ratios[self.layer_groups.to(self.device)]

    @property
    def layer_groups(self) -> torch.Tensor:
        """``[generated layers, 2]``: the coupled group of each generated layer's output and input channels
        (``num_genes`` where no group prunes that side)."""
        return self._traced()[1]

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None,
                gene: Iterable[int] | None = None) -> ImageClassifierOutput:
        logits = classifier_logits(self.network, {"pixel_values": pixel_values}, self.generate_params(gene))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits, labels, label_smoothing=self.config.label_smoothing)
        return ImageClassifierOutput(loss=loss, logits=logits)

    @torch.no_grad()
    def evaluate_gene(self, gene: Iterable[int], recalibration_batches: list, eval_batches: list) -> float:
        """Accuracy of the generated weights of ``gene`` on ``eval_batches`` after re-estimating BatchNorm
        statistics on ``recalibration_batches`` (MetaPruning's fitness; without it, eval-mode accuracy is noise)."""
        buffers = dict(self.network.named_buffers())  # cloned: recalibration rewrites them in place
        params = {k: v.detach().clone() if k in buffers else v.detach() for k, v in self.generate_params(gene).items()}
        was_training = self.network.training
        recalibrate_batchnorm(self.network, recalibration_batches, params=params)
        correct = total = 0
        for batch in eval_batches:
            logits = classifier_logits(self.network, {k: v.to(self.device) for k, v in batch.items()}, params)
            correct += int((logits.argmax(-1) == batch["labels"].to(self.device)).sum())
            total += len(batch["labels"])
        self.network.train(was_training)
        return correct / max(total, 1)

    @torch.no_grad()
    def generate(self, gene: Iterable[int], recalibration_batches: list | None = None,
                 from_scratch: bool = False) -> PruneResult:
        """The pruned network of ``gene`` as a plain model (saves and reloads like any pruned model): with the
        generated weights (BatchNorm recalibrated when batches are given) to finetune, or re-initialised
        (``from_scratch=True``, the paper's retraining)."""
        gene = self.check_gene(gene)
        model = copy.deepcopy(self.network).eval()
        model.load_state_dict({k: v.detach() for k, v in self.generate_params(gene).items()})
        result = prune_to_widths(model, self.example_inputs(), self.widths(gene), keep="first", inplace=True)
        if from_scratch:
            for m in result.model.modules():
                if m is not result.model and hasattr(m, "reset_parameters"):
                    m.reset_parameters()
            for m in result.model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.reset_running_stats()
        elif recalibration_batches:
            recalibrate_batchnorm(result.model, recalibration_batches)
        return result

    def search(self, data: Any, speed_up: float, **kwargs) -> "SearchResult":
        """The method's search for the best gene under a MACs budget: MetaPruning's evolutionary search."""
        return self.evolutionary_search(data, speed_up, **kwargs)

    def evolutionary_search(self, data: Any, speed_up: float, **kwargs) -> "SearchResult":
        """MetaPruning's evolutionary search on these generators (:func:`evolutionary_search`)."""
        from .search import evolutionary_search

        return evolutionary_search(self, data, speed_up, **kwargs)


def _key(name: str) -> str:
    return name.replace(".", "__")
