"""STAMP: a Set Transformer reads a sample of a task's images (the frozen backbone's pooled features) and one
generator per coupled channel group turns that task embedding into channel keep-logits, so a backbone pretrained on a
reference dataset is pruned *for a new task before training on it* (its training is then cheaper too).

Masks act through :meth:`~hf_metaprune.ChannelGroups.apply_mask` (every slice of a removed unit zeroed), which equals
the physically pruned network exactly when the mask is hard; :func:`~hf_metaprune.prune_units` builds that network.
"""
from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass

import timm
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from transformers.utils import ModelOutput

from ...data import ImageClassificationData
from ...pruning import ChannelGroups, LatencyTable, PruneResult, prune_units
from ..base import PruningMethodPreTrainedModel, copy_base_weights, model_card_template, timm_base
from .configuration import STAMPConfig


class MultiheadAttentionBlock(nn.Module):
    """MAB(X, Y) of the Set Transformer (Lee et al., 2019): ``H = LN(X + MHA(X, Y, Y))``, ``LN(H + rFF(H))``."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.attention = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.feed_forward = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x + self.attention(x, y, y, need_weights=False)[0])
        return self.norm2(h + self.feed_forward(h))


class InducedSetAttentionBlock(nn.Module):
    """ISAB: ``m`` learned inducing points attend to the set, the set attends back — O(n·m) instead of O(n²), and
    permutation-equivariant."""

    def __init__(self, dim: int, num_heads: int, num_inducing_points: int):
        super().__init__()
        self.inducing_points = nn.Parameter(torch.randn(1, num_inducing_points, dim) / math.sqrt(dim))
        self.summarise = MultiheadAttentionBlock(dim, num_heads)
        self.broadcast = MultiheadAttentionBlock(dim, num_heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.summarise(self.inducing_points.expand(len(x), -1, -1), x)
        return self.broadcast(x, h)


class SetEncoder(nn.Module):
    """Features of a set of images ``[batch, n, feature_size]`` → one task embedding ``[batch, hidden]``:
    a linear embedding, ISAB blocks and pooling by multihead attention with one learned seed (PMA), so the
    embedding does not depend on the order of the images."""

    def __init__(self, feature_size: int, hidden_size: int, num_heads: int, num_inducing_points: int, num_isab: int):
        super().__init__()
        self.embed = nn.Linear(feature_size, hidden_size)
        self.blocks = nn.ModuleList(InducedSetAttentionBlock(hidden_size, num_heads, num_inducing_points)
                                    for _ in range(num_isab))
        self.seed = nn.Parameter(torch.randn(1, 1, hidden_size) / math.sqrt(hidden_size))
        self.pool = MultiheadAttentionBlock(hidden_size, num_heads)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.embed(features)
        for block in self.blocks:
            x = block(x)
        return self.pool(self.seed.expand(len(x), -1, -1), x).squeeze(1)


class MaskGenerator(nn.Module):
    """One MLP per coupled group: (task embedding, log target speed-up) → a keep-logit per unit of the group,
    starting at ``init_keep_logit`` for every unit (masks start mostly open; :meth:`STAMPModel.init_from_norms`
    adds the backbone's own ranking)."""

    def __init__(self, group_sizes: list[int], hidden_size: int, init_keep_logit: float):
        super().__init__()
        self.groups = nn.ModuleList()
        for size in group_sizes:
            mlp = nn.Sequential(nn.Linear(hidden_size + 1, hidden_size), nn.ReLU(), nn.Linear(hidden_size, size))
            nn.init.normal_(mlp[2].weight, std=0.01)
            nn.init.constant_(mlp[2].bias, init_keep_logit)
            self.groups.append(mlp)

    def forward(self, embedding: torch.Tensor, speed_up: float | torch.Tensor) -> torch.Tensor:
        target = torch.as_tensor(speed_up, dtype=embedding.dtype, device=embedding.device).log().reshape(1, 1)
        context = torch.cat([embedding.reshape(1, -1), target], dim=1)
        return torch.cat([mlp(context).reshape(-1) for mlp in self.groups])


@dataclass
class STAMPOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None  # the query images' logits through the masked network and the task head
    keep_logits: torch.Tensor | None = None  # one per pruning unit
    expected_macs_ratio: torch.Tensor | None = None  # E[MACs of the masked network] / MACs of the backbone


class STAMPModel(PruningMethodPreTrainedModel):
    """Task-adaptive channel masks for ``config.base_architecture``: :meth:`prune` reads a sample of a new task and
    returns the backbone physically pruned for it, with a fresh head for the task's classes."""

    config_class = STAMPConfig
    base_model_prefix = "stamp"
    main_input_name = "support_pixel_values"
    checkpoint_noun = "STAMP model"

    def __init__(self, config: STAMPConfig):
        super().__init__(config)
        if not config.base_architecture:
            raise ValueError("STAMPModel: config.base_architecture must name a timm model (e.g. 'cifar_resnet20'); "
                             "use STAMPModel.from_network(backbone) to start from a trained backbone")
        try:
            self.network = timm.create_model(config.base_architecture, pretrained=False, **config.base_model_kwargs)
        except RuntimeError as e:  # timm: "Unknown model"
            raise ValueError(f"STAMPModel: base_architecture '{config.base_architecture}' is not a timm model ({e})"
                             ) from e
        if not hasattr(self.network, "get_classifier"):
            raise ValueError(f"STAMPModel: {config.base_architecture} has no get_classifier(); STAMP reads the "
                             "backbone's pooled features at its classifier's input")
        self.network.requires_grad_(False)  # the reference backbone stays as it was pretrained
        self._groups: ChannelGroups | None = None
        if config.feature_size is None or config.group_sizes is None:
            groups = self.groups  # a fresh config: trace the backbone once to size the encoder and generators
            config.group_sizes = list(groups.group_sizes)
            config.feature_size = self.network.get_classifier().in_features
        self.encoder = SetEncoder(config.feature_size, config.hidden_size, config.num_heads,
                                  config.num_inducing_points, config.num_isab)
        self.generator = MaskGenerator(config.group_sizes, config.hidden_size, config.init_keep_logit)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        pass  # the backbone keeps its weights; the encoder and generators set their own initialisation

    @classmethod
    def from_network(cls, backbone: nn.Module, **config_kwargs) -> "STAMPModel":
        """A STAMP model for ``backbone`` (a timm model pretrained on the reference data), whose weights it copies."""
        where = f"{cls.__name__}.from_network"
        architecture, kwargs = timm_base(backbone, where)
        model = cls(cls.config_class(base_architecture=architecture, base_model_kwargs=kwargs, **config_kwargs))
        copy_base_weights(model.network, backbone, where)
        if model.config.init_from_norms:
            model.init_from_norms()
        return model

    @torch.no_grad()
    def init_from_norms(self) -> None:
        """Start every unit's keep-logit at ``init_keep_logit`` plus its group-L2 norm's z-score within its group
        (log scale), so the generators begin from the backbone's own ranking (DepGraph's criterion) and meta-training
        learns how a task moves it, instead of starting from a tie broken by noise."""
        groups = self.groups
        params = {k: v.detach() for k, v in self.network.named_parameters()}
        log_norms = groups.unit_sq_norms(params, include_bias=False).clamp_min(1e-12).log().cpu()
        for g, mlp in enumerate(self.generator.groups):
            x = log_norms[groups.group_of_unit == g]
            z = (x - x.mean()) / x.std().clamp_min(1e-6) if len(x) > 1 else torch.zeros_like(x)
            mlp[2].bias.copy_(self.config.init_keep_logit + z.to(mlp[2].bias))

    def model_card(self, repo_id: str | None = None):
        from huggingface_hub import ModelCard, ModelCardData

        c = self.config
        tags = ["pruning", "structured-pruning", "meta-learning", "stamp", "hf_metaprune"]
        if c.base_architecture:
            tags.append(c.base_architecture)
        data = ModelCardData(library_name="hf_metaprune", tags=tags, datasets=[c.dataset] if c.dataset else None,
                             base_architecture=c.base_architecture, validation_scores=c.validation_scores)
        return ModelCard.from_template(
            data, template_path=model_card_template("stamp"), model_id=repo_id, base_architecture=c.base_architecture,
            dataset=c.dataset, hidden_size=c.hidden_size, num_isab=c.num_isab, num_heads=c.num_heads,
            num_inducing_points=c.num_inducing_points, set_size=c.set_size, budget=c.budget,
            speed_ups=c.speed_ups, validation_scores=c.validation_scores)

    # ---- structure -------------------------------------------------------------------------------------------
    def example_inputs(self, batch_size: int = 1) -> torch.Tensor:
        return torch.zeros(batch_size, *self.config.input_shape, device=self.device)

    @property
    def groups(self) -> ChannelGroups:
        """The backbone's coupled groups: the generators emit one keep-logit per unit, in this order."""
        if self._groups is None:  # traced on first use (from_pretrained builds the model on the meta device)
            groups = ChannelGroups.from_model(self.network, self.example_inputs())
            expected = self.config.group_sizes
            if expected is not None and list(groups.group_sizes) != list(expected):
                raise ValueError(f"STAMPModel: the backbone {self.config.base_architecture} has coupled groups of "
                                 f"sizes {groups.group_sizes}, but the generators were built for {expected}")
            self._groups = groups
        return self._groups

    def features(self, pixel_values: torch.Tensor, params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Pooled features of the backbone (its classifier's input), with ``params`` swapped in when given; the
        backbone runs in eval mode (reference BatchNorm statistics, as the pruned network starts)."""
        captured = []
        hook = self.network.get_classifier().register_forward_pre_hook(lambda m, args: captured.append(args[0]))
        was_training = self.network.training
        self.network.eval()
        try:
            if params is None:
                self.network(pixel_values)
            else:
                functional_call(self.network, params, (pixel_values,))
        finally:
            hook.remove()
            self.network.train(was_training)
        return captured[0].flatten(1)

    def keep_logits(self, set_pixel_values: torch.Tensor, speed_up: float | torch.Tensor) -> torch.Tensor:
        """One keep-logit per pruning unit for the task the images ``[n, C, H, W]`` sample, at ``speed_up``."""
        with torch.no_grad():
            features = self.features(set_pixel_values)
        return self.generator(self.encoder(features.unsqueeze(0))[0], speed_up)

    def masked_params(self, keep: torch.Tensor) -> dict[str, torch.Tensor]:
        """The backbone's parameters and buffers with every slice of unit ``u`` scaled by ``keep[u]``."""
        params = {**dict(self.network.named_parameters()), **dict(self.network.named_buffers())}
        return self.groups.apply_mask(params, keep)

    def budget_loss(self, keep_logits: torch.Tensor, speed_up: float | torch.Tensor) -> tuple[torch.Tensor,
                                                                                                torch.Tensor]:
        """The budget term and E[MACs]/MACs of the masked network (``config.budget``: ``macs`` or ``kl``)."""
        probs = torch.sigmoid(keep_logits)
        ratio = self.groups.expected_macs(probs) / self.groups.macs()
        target = 1.0 / torch.as_tensor(speed_up, dtype=ratio.dtype, device=ratio.device)
        if self.config.budget == "macs":
            return F.relu(ratio - target), ratio
        cost = self.groups.unit_costs().to(probs)
        prior = target.clamp(1e-4, 1 - 1e-4)
        p = probs.clamp(1e-6, 1 - 1e-6)
        kl = p * (p / prior).log() + (1 - p) * ((1 - p) / (1 - prior)).log()
        return (kl * cost).sum() / cost.sum(), ratio

    def forward(self, support_pixel_values: torch.Tensor, support_labels: torch.Tensor,
                query_pixel_values: torch.Tensor, query_labels: torch.Tensor | None = None,
                speed_up: float | torch.Tensor | None = None, inner_steps: int = 10,
                inner_learning_rate: float = 0.5) -> STAMPOutput:
        """One meta-training episode (first-order): encode the support set, sample relaxed Bernoulli masks (hard
        masks in eval mode), fit a fresh head on the masked support features — the prototypes' linear classifier,
        then ``inner_steps`` of gradient descent on it — and score the query images through the masked network.
        The loss (query CE + ``budget_weight`` · budget) reaches the encoder and generators through the masks."""
        speed_up = float(sum(self.config.speed_ups) / 2) if speed_up is None else speed_up
        speed_up = torch.as_tensor(speed_up, dtype=torch.float32, device=self.device).reshape(())
        logits = self.keep_logits(support_pixel_values, speed_up)
        if self.training:
            keep = torch.distributions.RelaxedBernoulli(
                torch.tensor(self.config.mask_temperature, device=logits.device), logits=logits).rsample()
        else:
            keep = (logits > 0).float()
        params = self.masked_params(keep)
        head = fit_head(self.features(support_pixel_values, params).detach(), support_labels, inner_steps,
                        inner_learning_rate)
        query_logits = head(self.features(query_pixel_values, params))
        budget, ratio = self.budget_loss(logits, speed_up)
        loss = None
        if query_labels is not None:
            loss = F.cross_entropy(query_logits, query_labels) + self.config.budget_weight * budget
        return STAMPOutput(loss=loss, logits=query_logits, keep_logits=logits, expected_macs_ratio=ratio)

    # ---- meta-test -------------------------------------------------------------------------------------------
    def removed_for_speedup(self, keep_logits: torch.Tensor, speed_up: float, round_to: int | None = None,
                            latency_table: LatencyTable | None = None) -> torch.Tensor:
        """The units to remove so that the backbone reaches ``speed_up`` in MACs (or in the latency ``latency_table``
        estimates), the lowest keep-logits first
        (:meth:`ChannelGroups.removed_for_speedup <hf_metaprune.ChannelGroups.removed_for_speedup>`)."""
        try:
            return self.groups.removed_for_speedup(keep_logits, speed_up, round_to, latency_table)
        except ValueError as e:
            raise ValueError(f"STAMPModel ({self.config.base_architecture}): {e}") from None

    @torch.no_grad()
    def task_masks(self, task_data: ImageClassificationData | dict, speed_up: float, seed: int = 0,
                   round_to: int | None = None, latency_table: LatencyTable | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """(keep-logits, removed units) for a new task from a class-balanced sample of ``config.set_size`` of its
        training images (``task_data``: an :class:`~hf_metaprune.data.ImageClassificationData` or a collated batch
        ``{"pixel_values", "labels"}``)."""
        pixel_values = task_sample(task_data, self.config.set_size, seed)["pixel_values"].to(self.device)
        was_training = self.training
        self.eval()
        try:
            logits = self.keep_logits(pixel_values, float(speed_up))
        finally:
            self.train(was_training)
        return logits, self.removed_for_speedup(logits, speed_up, round_to, latency_table)

    def prune(self, model: nn.Module | None, task_data: ImageClassificationData | dict, speed_up: float,
              num_classes: int | None = None, seed: int = 0, round_to: int | None = None,
              latency_table: LatencyTable | None = None) -> PruneResult:
        """``model`` (a backbone of this architecture, e.g. the reference backbone itself; ``None``: this model's
        copy) pruned for the task ``task_data`` samples to ``speed_up`` in MACs, with a fresh classifier for the
        task's ``num_classes`` (default: ``task_data.num_classes``, or the distinct labels of a collated batch).
        ``round_to``: channel counts kept to multiples of it (real speed-ups need kernel-friendly widths);
        ``latency_table``: a :class:`~hf_metaprune.LatencyTable` measured on the backbone makes ``speed_up`` a latency
        target."""
        if model is None:
            model = self.network
        if not isinstance(model, nn.Module) or not isinstance(getattr(model, "get_classifier", lambda: None)(),
                                                               nn.Linear):
            raise TypeError(f"STAMPModel.prune: model must be a timm model of {self.config.base_architecture} whose "
                            f"get_classifier() is a Linear layer, got {type(model).__name__}")
        logits, removed = self.task_masks(task_data, speed_up, seed, round_to, latency_table)
        if num_classes is None:
            num_classes = (task_data.num_classes if isinstance(task_data, ImageClassificationData)
                           else int(task_data["labels"].max()) + 1)
        target = copy.deepcopy(model).cpu()
        attach_head(target, num_classes)  # the new task's head, attached before pruning removes its inputs
        for p in target.parameters():
            p.requires_grad_(True)
        groups = ChannelGroups.from_model(target, self.example_inputs().cpu())
        if list(groups.group_sizes) != list(self.groups.group_sizes):
            raise ValueError(f"STAMPModel.prune: model's coupled groups have sizes {groups.group_sizes}; this STAMP "
                             f"model generates masks for {self.groups.group_sizes} ({self.config.base_architecture})")
        return prune_units(target, self.example_inputs().cpu(), removed, inplace=True)


def attach_head(model: nn.Module, num_classes: int) -> None:
    """Replace ``model``'s classifier by a freshly initialised one for ``num_classes`` classes."""
    old = model.get_classifier()
    path = next(name for name, m in model.named_modules() if m is old)
    parent, _, attr = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr,
            nn.Linear(old.in_features, num_classes, bias=old.bias is not None))
    if hasattr(model, "num_classes"):
        model.num_classes = num_classes


def fit_head(features: torch.Tensor, labels: torch.Tensor, steps: int, learning_rate: float) -> nn.Linear:
    """A fresh linear head for a task: the prototypes' nearest-mean classifier (``w_k = μ_k``,
    ``b_k = −½‖μ_k‖²``), refined by ``steps`` of full-batch gradient descent on the cross-entropy of
    ``features``."""
    num_classes = int(labels.max()) + 1
    one_hot = F.one_hot(labels, num_classes).to(features.dtype)
    means = (one_hot.t() @ features) / one_hot.sum(0).clamp_min(1).unsqueeze(1)
    head = nn.Linear(features.shape[1], num_classes).to(features.device)
    with torch.no_grad():
        head.weight.copy_(means)
        head.bias.copy_(-0.5 * means.pow(2).sum(1))
    if steps:
        optimizer = torch.optim.SGD(head.parameters(), lr=learning_rate / max(1.0, float(means.pow(2).sum(1).mean())))
        with torch.enable_grad():
            for _ in range(steps):
                optimizer.zero_grad()
                F.cross_entropy(head(features), labels).backward()
                optimizer.step()
    return head.requires_grad_(False)


def task_sample(task_data: ImageClassificationData | dict, size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A class-balanced sample of at most ``size`` training images of a task, normalised (a collated batch), or a
    ValueError when the task has no images or a single class (a set that says nothing about what to tell apart)."""
    if isinstance(task_data, ImageClassificationData):
        labels = task_data.train.labels
        if len(labels) == 0:
            raise ValueError("STAMP: task_data holds zero training images; a task sample needs images of >= 2 "
                             "classes")
        rng = random.Random(seed)
        by_class: dict[int, list[int]] = {}
        for i, c in enumerate(labels.tolist()):
            by_class.setdefault(c, []).append(i)
        _check_classes(len(by_class))
        per_class = max(1, size // len(by_class))
        picked = [i for members in by_class.values() for i in rng.sample(members, min(per_class, len(members)))]
        return task_data.collator()([task_data.train[i] for i in sorted(picked)])
    if isinstance(task_data, dict) and isinstance(task_data.get("pixel_values"), torch.Tensor) and \
            isinstance(task_data.get("labels"), torch.Tensor):
        if len(task_data["pixel_values"]) == 0:
            raise ValueError("STAMP: task_data['pixel_values'] holds zero images; a task sample needs images of >= 2 "
                             "classes")
        _check_classes(len(torch.unique(task_data["labels"])))
        return task_data
    raise TypeError("STAMP: task_data must be an ImageClassificationData (hf_metaprune.load_image_classification, "
                    "select_classes for a class split) or a collated batch {'pixel_values': float tensor, 'labels': "
                    f"long tensor}}, got {type(task_data).__name__}")


def _check_classes(n: int) -> None:
    if n < 2:
        raise ValueError(f"STAMP: task_data holds {n} class; a task sample needs images of >= 2 classes (the masks "
                         "keep what tells the task's classes apart)")
