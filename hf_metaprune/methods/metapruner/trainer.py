"""Meta-training of the graph metanetwork with a 🤗 Trainer (Accelerate, logging, checkpointing, multi-GPU).

Training examples are data models from a zoo. One optimizer step, per data model:

1. ``W' = M(G(W))`` — one forward of the metanetwork, differentiable in ``M``'s parameters;
2. ``g = Σ_b ∂T(W'; x_b, y_b)/∂W'`` over ``task_batches_per_step`` task batches, with ``W'`` detached
   (``torch.func.functional_call``; the target stays in eval mode so BN uses its stored statistics);
3. one backward through the GNN of the surrogate ``⟨W', g⟩ + λ·Σ γ_u ||W'_u||²``, whose gradient in ``M`` equals
   that of the full loss — the published code instead backpropagated through the GNN once per task batch.

The task term ``T`` (:func:`task_loss`) is the published ``CE(f(x; W'))`` mixed with its *pruning-aware* version
``CE(f(x; W' ⊙ m))``: ``m`` masks out the units that ``prune_to_speedup`` would remove from ``W'`` at a target
speed-up (sampled per step from ``prune_aware_speed_ups``), so the metanetwork learns to move what the network
knows out of what will be cut — the published objective never looks at the pruned network. Optionally both
terms distil from the untransformed data model's outputs.

Task batches are drawn from a generator seeded by (seed, step, data model), so results do not depend on the
number of processes and a resumed run continues exactly. Evaluation is *prune-and-probe* on held-out data
models: transform, prune to the target speed-up, a short finetune, accuracy on the validation split.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import os
from collections import defaultdict
from dataclasses import dataclass, field

import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn
from accelerate.utils import gather_object
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer import TRAINING_ARGS_NAME
from transformers.trainer_utils import get_last_checkpoint

from ..._io import atomic_files
from ...data import ClassificationData
from ...graph import NetworkGraph, model_to_graph
from ...pruning import prune_to_speedup
from ...pruning.groups import ChannelGroups, check_round_to, sparsity_penalty
from ...training.finetune import classifier_logits, evaluate_accuracy
from ...training.zoo import DataModelZoo
from .configuration import MetaPrunerConfig
from .modeling import MetaPrunerModel
from .objectives import group_norm_stats, task_loss


@dataclass
class MetaPrunerTrainingArguments(TrainingArguments):
    """``TrainingArguments`` plus the meta-training objective and the prune-and-probe evaluation.

    Defaults that differ from ``TrainingArguments``: AdamW (unfused, no weight decay) at a constant 1e-3 — the
    metanetwork's edits are small residuals that weight decay or a decaying schedule would only shrink — one data
    model per device and step, no reporting integrations and the CPU when no GPU is visible. The objective's defaults (relative sparsity λ = 3e-2,
    pruning-aware share β = 0.5, 4 task batches of 64 per step) are the recipe the CIFAR ablation selected on
    validation data (README, "Ablation"); the published objective is ``prune_aware_weight=0``.
    """

    learning_rate: float = field(default=1e-3, metadata={"help": "AdamW learning rate of the metanetwork"})
    optim: str = field(default="adamw_torch", metadata={"help": "optimizer (TrainingArguments.optim)"})
    lr_scheduler_type: str = field(default="constant", metadata={"help": "schedule (TrainingArguments)"})
    per_device_train_batch_size: int = field(default=1, metadata={"help": "data models per device and step"})
    logging_steps: float = field(default=10, metadata={"help": "log the objective's terms every N steps"})
    report_to: None | str | list[str] = field(default="none", metadata={"help": "reporting integrations"})
    use_cpu: bool = field(default=not torch.cuda.is_available(), metadata={
        "help": "run on the CPU (default when no GPU is visible: then `accelerate launch --multi_gpu` runs gloo DDP "
                "over CPU processes)"})
    sparsity_lambda: float = field(default=3e-2, metadata={"help": "λ of the group-norm sparsity term"})
    sparsity_alpha: float = field(default=16.0, metadata={"help": "α of DepGraph's per-unit weights γ"})
    sparsity_relative: bool = field(default=True, metadata={
        "help": "divide each unit's term by its group's mean squared norm: scale-free, rewards concentration only"})
    prune_aware_weight: float = field(default=0.5, metadata={
        "help": "share β of the task loss on W' with the units pruning would remove masked out (1 − β on W')"})
    prune_aware_speed_ups: list[float] | None = field(default=None, metadata={
        "help": "MACs speed-ups the pruning-aware term masks for, one drawn per step and data model "
                "(default: probe_speed_up)"})
    prune_aware_temperature: float = field(default=0.0, metadata={
        "help": "0: hard mask (constant); > 0: straight-through sigmoid of the criterion's score at this temperature"})
    distill_weight: float = field(default=0.0, metadata={
        "help": "share of each task term replaced by the KL divergence (T=4) to the untransformed model's outputs"})
    task_batch_size: int = field(default=64, metadata={"help": "images per task batch"})
    task_batches_per_step: int = field(default=4, metadata={"help": "task batches per GNN backward"})
    weak_group_threshold: float = field(default=0.5, metadata={
        "help": "a unit is weak when its norm is below this × its group's mean norm in the untransformed model"})
    probe_speed_up: float = field(default=2.0, metadata={"help": "MACs speed-up pruned to during evaluation"})
    round_to: int | None = field(default=None, metadata={
        "help": "prune to channel counts that are multiples of this in the pruning-aware mask and the probe, as "
                "prune_to_speedup(round_to=...) will (None: widths as the criterion leaves them)"})
    probe_finetune_steps: int = field(default=50, metadata={"help": "SGD steps after pruning in evaluation"})
    probe_learning_rate: float = field(default=0.01, metadata={"help": "learning rate of the probe finetune"})
    probe_eval_samples: int | None = field(default=None, metadata={"help": "validation images per probe"})
    ema_decay: float = field(default=0.0, metadata={
        "help": "decay of an exponential moving average of the metanetwork's weights (0: off); evaluation, "
                "checkpoints and the result use the average, which smooths the noisy meta-gradient"})
    dataloader_drop_last: bool = field(default=True, metadata={
        "help": "drop an incomplete last batch of data models (Accelerate would pad it with repeats, so results "
                "would depend on the process count)"})

    def __post_init__(self):
        self.remove_unused_columns = False
        if self.metric_for_best_model is None:
            self.metric_for_best_model = "probe_accuracy"
        super().__post_init__()
        for name in ("prune_aware_weight", "distill_weight"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) (0: no weight averaging), got {self.ema_decay}")
        check_round_to(self.round_to)
        if self.prune_aware_temperature < 0:
            raise ValueError(f"prune_aware_temperature must be >= 0, got {self.prune_aware_temperature}")
        speed_ups = self.prune_aware_speed_ups
        if speed_ups is not None and (not speed_ups or any(not v > 1.0 for v in speed_ups)):
            raise ValueError(f"prune_aware_speed_ups must be a non-empty list of MACs speed-ups > 1, got {speed_ups}")
        if self.gradient_accumulation_steps != 1:
            raise ValueError("MetaPrunerTrainer accumulates over task batches itself (task_batches_per_step) to "
                             "backpropagate through the GNN once per step; leave gradient_accumulation_steps=1")


class _ZooIndex(torch.utils.data.Dataset):
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, int]:
        return {"data_model": i}


def _collate_indices(items: list[dict[str, int]]) -> dict[str, torch.Tensor]:
    return {"data_model": torch.tensor([it["data_model"] for it in items], dtype=torch.long)}


@dataclass
class _Target:
    """A data model prepared for meta-training: module (frozen, eval), its graph and its channel groups."""

    module: nn.Module
    graph: NetworkGraph
    groups: ChannelGroups
    param_names: list[str]
    buffers: dict[str, torch.Tensor]
    unit_norms: torch.Tensor  # of the untransformed data model: the reference scale of "weak"


class MetaPrunerTrainer(Trainer):
    """Trains a :class:`MetaPrunerModel` on a :class:`DataModelZoo` of one architecture.

    Args:
        model: the metanetwork (its config's edge/node kinds must cover the zoo's graphs).
        args: :class:`MetaPrunerTrainingArguments`; ``per_device_train_batch_size`` counts data models.
        train_zoo / eval_zoo: data models to train on and to prune-and-probe (use ``zoo.split``).
        data: task data; training batches come from ``data.train``, scores from ``data.validation``.
    """

    def __init__(self, model: MetaPrunerModel, args: MetaPrunerTrainingArguments, train_zoo: DataModelZoo,
                 data: ClassificationData, eval_zoo: DataModelZoo | None = None, **kwargs):
        if not isinstance(args, MetaPrunerTrainingArguments):
            raise TypeError("args must be MetaPrunerTrainingArguments")
        self.architecture = train_zoo.require_architecture()
        if eval_zoo is not None and eval_zoo.require_architecture() != self.architecture:
            raise ValueError(f"eval zoo holds {eval_zoo.require_architecture()} but the train zoo holds "
                             f"{self.architecture}; prune-and-probe needs the family the metanetwork learns")
        for zoo in (train_zoo, eval_zoo):  # a text zoo with image data, other classes, other data: refuse now
            if zoo is not None:
                zoo.check_data(data)
        self.train_zoo, self.eval_zoo, self.data = train_zoo, eval_zoo, data
        super().__init__(model=model, args=args, train_dataset=_ZooIndex(len(train_zoo)),
                         eval_dataset=_ZooIndex(len(eval_zoo)) if eval_zoo is not None else None,
                         data_collator=_collate_indices, **kwargs)
        self.loss_is_scaled_for_ga = True
        self._targets: dict[int, _Target] = {}
        self._log_sums: dict[str, float] = defaultdict(float)
        self._log_count = 0
        self._baseline_probe: float | None = None
        config = self._unwrapped().config
        config.base_architecture = self.architecture
        config.num_data_models = len(train_zoo) + (len(eval_zoo) if eval_zoo is not None else 0)
        config.target_speed_ups = [args.probe_speed_up]
        self._ema: dict[str, torch.Tensor] | None = None  # the averaged weights, once a step has been taken
        if args.ema_decay > 0:
            self.add_callback(_AverageAfterEachStep(self))

    # ---- data models ------------------------------------------------------------------------------------
    def _example_inputs(self):
        return self.data.example_inputs(device=self.args.device)

    def _target(self, index: int) -> _Target:
        if index not in self._targets:
            module = self.train_zoo.model(index).to(self.args.device)
            for p in module.parameters():
                p.requires_grad_(False)
            x = self._example_inputs()
            graph = model_to_graph(module, x).to(self.args.device)
            self._unwrapped().check_graph(graph)
            groups = ChannelGroups.from_model(module, x)
            params = dict(module.named_parameters())
            self._targets[index] = _Target(module, graph, groups, list(params),
                                           {n: b.detach() for n, b in module.named_buffers()},
                                           groups.unit_sq_norms(params).detach().sqrt())
        return self._targets[index]

    def _task_batches(self, index: int) -> tuple[list[dict[str, torch.Tensor]], float]:
        """Task batches and the pruning-aware speed-up of one step; deterministic in (seed, step, data model):
        independent of process count, exact on resume."""
        args = self.args
        g = torch.Generator().manual_seed(_seed(args.seed, self.state.global_step, index))
        speed_ups = args.prune_aware_speed_ups or [args.probe_speed_up]
        speed_up = speed_ups[int(torch.randint(len(speed_ups), (1,), generator=g))]
        n, b, k = len(self.data.train), args.task_batch_size, args.task_batches_per_step
        order = torch.randperm(n, generator=g)[: b * k] if b * k <= n else torch.randint(n, (b * k,), generator=g)
        collate = self.data.collator(augment=True, generator=g)
        batches = []
        for j in range(k):
            batch = collate([self.data.train[int(i)] for i in order[j * b:(j + 1) * b]])
            batches.append({key: v.to(args.device) for key, v in batch.items()})
        return batches, speed_up

    # ---- objective --------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        indices = inputs["data_model"].tolist()
        targets = [self._target(i) for i in indices]
        new_graphs = model([t.graph for t in targets])  # one (DDP) forward for all data models of the step
        surrogate, value = 0.0, 0.0
        args = self.args
        for index, target, new_graph in zip(indices, targets, new_graphs):
            tensors = new_graph.tensors()
            params = {n: tensors[n] for n in target.param_names}
            ce, grads, task_stats = self._task_gradient(target, params, index)
            penalty, norms = sparsity_penalty(target.groups, params, args.sparsity_alpha, args.sparsity_relative)
            inner = sum((params[n] * grads[n]).sum() for n in params)
            surrogate = surrogate + inner + args.sparsity_lambda * penalty
            value = value + ce + args.sparsity_lambda * penalty.detach()
            stats = group_norm_stats(target.groups, norms, args.weak_group_threshold, target.unit_norms)
            penalty_value = float(penalty.detach())
            stats.update(task_stats, task_loss=float(ce), sparsity_loss=penalty_value,
                         sparsity_term=args.sparsity_lambda * penalty_value)
            for k, v in stats.items():
                self._log_sums[k] += v
            self._log_count += 1
        n = len(indices)
        if not math.isfinite(float(value)):
            raise FloatingPointError(
                f"non-finite meta-training loss ({float(value) / n}) at step {self.state.global_step} on data models "
                f"{indices}; the last good checkpoint in {args.output_dir} is untouched. Lower the learning rate, "
                "sparsity_lambda or residual_scale.")
        # Value of the real loss, gradient of the surrogate (which equals the real loss's gradient in M).
        loss = surrogate / n
        loss = loss - loss.detach() + value / n
        return (loss, new_graphs) if return_outputs else loss

    def _task_gradient(self, target: _Target, params: dict[str, torch.Tensor], index: int):
        """The task loss summed over the step's batches, its gradient in ``W'`` (detached) and its parts."""
        args = self.args
        leaves = {n: p.detach().requires_grad_() for n, p in params.items()}
        state = {**leaves, **target.buffers}
        batches, speed_up = self._task_batches(index)
        removed = None
        if args.prune_aware_weight > 0:
            removed = target.groups.pruned_units(leaves, speed_up, round_to=args.round_to)
        total = torch.zeros((), device=self.args.device)
        stats: dict[str, float] = defaultdict(float)
        for batch in batches:
            teacher = None
            if args.distill_weight > 0:
                with torch.no_grad():
                    teacher = classifier_logits(target.module, batch)  # the untransformed data model
            loss, parts = task_loss(target.module, state, batch, target.groups, removed, args.prune_aware_weight,
                                    args.prune_aware_temperature, teacher, args.distill_weight)
            (loss / len(batches)).backward()
            total += loss.detach() / len(batches)
            for k, v in parts.items():
                stats[k] += v / len(batches)
        if removed is not None:
            stats["pruned_unit_fraction"] = float(removed.float().mean())
        return total, {n: leaf.grad for n, leaf in leaves.items()}, dict(stats)

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        """Add the objective's terms and group-norm statistics (averaged over processes) to training logs."""
        if "loss" in logs and self._log_count:
            keys = sorted(self._log_sums)
            local = torch.tensor([self._log_sums[k] / self._log_count for k in keys], device=self.args.device)
            reduced = self.accelerator.reduce(local, reduction="mean") if self.accelerator.num_processes > 1 else local
            logs.update({k: round(float(v), 6) for k, v in zip(keys, reduced)})
            self._log_sums.clear()
            self._log_count = 0
        super().log(logs, *args, **kwargs)

    # ---- evaluation: prune-and-probe ----------------------------------------------------------------------
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        if self.eval_zoo is None:
            raise ValueError("evaluation needs held-out data models: pass eval_zoo (see DataModelZoo.split)")
        metapruner = self._unwrapped()
        was_training = metapruner.training
        metapruner.eval()
        indices = list(range(len(self.eval_zoo)))
        with self.accelerator.split_between_processes(indices) as mine, self._averaged_weights():
            local = [self._probe(metapruner, i, with_baseline=self._baseline_probe is None) for i in mine]
        rows = [r for part in gather_object([local]) for r in part]
        metapruner.train(was_training)
        metrics = {f"{metric_key_prefix}_{k}": sum(r[k] for r in rows) / len(rows) for k in rows[0] if k != "baseline"}
        if self._baseline_probe is None:
            self._baseline_probe = sum(r["baseline"] for r in rows) / len(rows)
        metrics[f"{metric_key_prefix}_baseline_probe_accuracy"] = self._baseline_probe
        metapruner.config.validation_scores = {k.removeprefix(f"{metric_key_prefix}_"): round(v, 4)
                                               for k, v in metrics.items()}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    @torch.no_grad()
    def _probe(self, metapruner: MetaPrunerModel, index: int, with_baseline: bool) -> dict[str, float]:
        args, x = self.args, self._example_inputs()
        data = self.data
        if args.probe_eval_samples:
            data = copy.copy(data)
            data.validation = data.validation.subset(args.probe_eval_samples)
        original = self.eval_zoo.model(index).to(args.device)
        transformed = metapruner.transform(original, x)
        row = {"original_accuracy": evaluate_accuracy(original, data),
               "transformed_accuracy": evaluate_accuracy(transformed, data)}
        pruned = prune_to_speedup(transformed, x, args.probe_speed_up, importance="group_l2",
                                  round_to=args.round_to).model
        row["pruned_accuracy"] = evaluate_accuracy(pruned, data)
        row["probe_accuracy"] = evaluate_accuracy(self._probe_finetune(pruned, index), data)
        if with_baseline:  # the same probe without the metanetwork, for reference
            baseline = prune_to_speedup(original, x, args.probe_speed_up, importance="group_l2",
                                        round_to=args.round_to).model
            row["baseline"] = evaluate_accuracy(self._probe_finetune(baseline, index), data)
        return row

    def _probe_finetune(self, model: nn.Module, index: int) -> nn.Module:
        """A short, deterministic SGD finetune (a local loop: each process probes its own data models)."""
        args = self.args
        g = torch.Generator().manual_seed(_seed(args.seed, -1, index))
        collate = self.data.collator(augment=True, generator=g)
        opt = torch.optim.SGD(model.parameters(), lr=args.probe_learning_rate, momentum=0.9, weight_decay=5e-4)
        model.train()
        with torch.enable_grad():
            for _ in range(args.probe_finetune_steps):
                idx = torch.randint(len(self.data.train), (args.task_batch_size,), generator=g)
                batch = collate([self.data.train[int(i)] for i in idx])
                batch = {k: v.to(args.device) for k, v in batch.items()}
                loss = F.cross_entropy(classifier_logits(model, batch), batch["labels"])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        return model.eval()

    def _save(self, output_dir: str | None = None, state_dict=None):
        """Checkpoints and the final folder stay pickle-free: the Trainer's pickled ``training_args.bin`` is dropped
        (resuming does not read it; the arguments are in ``trainer_state.json``'s log and the model card). With
        weight averaging the model weights saved are the average (what evaluation scored, so the best checkpoint is
        the averaged metanetwork); the weights being trained go beside them, for resuming."""
        output_dir = output_dir or self.args.output_dir
        if self._ema is not None and state_dict is None:
            trained = {n: p.detach().contiguous() for n, p in self._unwrapped().named_parameters()}
            super()._save(output_dir, {**self._unwrapped().state_dict(), **self._ema})
            with atomic_files(output_dir, [TRAINED_WEIGHTS_NAME]) as tmp:
                safetensors.torch.save_file(trained, tmp[TRAINED_WEIGHTS_NAME])
        else:
            super()._save(output_dir, state_dict)
        path = os.path.join(output_dir, TRAINING_ARGS_NAME)
        if os.path.isfile(path):
            os.remove(path)

    # ---- weight averaging ---------------------------------------------------------------------------------
    def _unwrapped(self) -> MetaPrunerModel:
        return self.accelerator.unwrap_model(self.model)

    @torch.no_grad()
    def _update_average(self) -> None:
        params = self._unwrapped().named_parameters()
        if self._ema is None:
            self._ema = {n: p.detach().clone() for n, p in params}
        else:
            for n, p in params:
                self._ema[n].lerp_(p.detach(), 1.0 - self.args.ema_decay)

    @contextlib.contextmanager
    def _averaged_weights(self):
        """The averaged weights in the model for the duration (nothing changes without averaging)."""
        if self._ema is None:
            yield
            return
        model = self._unwrapped()
        trained = {n: p.detach().clone() for n, p in model.named_parameters()}
        _copy_parameters(model, self._ema)
        try:
            yield
        finally:
            _copy_parameters(model, trained)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """Resuming a run with weight averaging: the checkpoint's model weights are the average, the trained ones
        lie beside them; training continues from the trained weights (with or without averaging now)."""
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        path = os.path.join(resume_from_checkpoint, TRAINED_WEIGHTS_NAME)
        if not os.path.isfile(path):
            return
        params = dict(self._unwrapped().named_parameters())
        trained = safetensors.torch.load_file(path)
        if set(trained) != set(params) or any(trained[n].shape != p.shape for n, p in params.items()):
            raise ValueError(f"{path}: the trained weights do not match this metanetwork's parameters; the checkpoint "
                             "belongs to another metanetwork")
        if self.args.ema_decay > 0:
            self._ema = {n: p.detach().clone() for n, p in params.items()}
        _copy_parameters(self._unwrapped(), trained)

    # ---- end of training: the best checkpoint's scores go to the model card --------------------------------
    def train(self, *args, **kwargs):
        output = super().train(*args, **kwargs)
        best = self.state.best_model_checkpoint
        if self._ema is not None and not (self.args.load_best_model_at_end and best):
            _copy_parameters(self._unwrapped(), self._ema)  # the result is the average (a loaded best one already is)
        self._ema = None
        config = self._unwrapped().config
        if best and os.path.isfile(os.path.join(best, "config.json")):
            with open(os.path.join(best, "config.json")) as f:
                config.validation_scores = json.load(f).get("validation_scores")
        return output


TRAINED_WEIGHTS_NAME = "trained_weights.safetensors"  # beside averaged checkpoints: the weights being trained


@torch.no_grad()
def _copy_parameters(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Every parameter of ``model`` set to the tensor of its name (the average, or the trained weights)."""
    for n, p in model.named_parameters():
        p.copy_(tensors[n])


class _AverageAfterEachStep(TrainerCallback):
    def __init__(self, trainer: MetaPrunerTrainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer._update_average()


def _seed(*parts: int) -> int:
    """A seed from integers, identical in every process (Python's ``hash`` of strings is not)."""
    seed = 0
    for p in parts:
        seed = (seed * 1_000_003 + p + 1) % (2 ** 62)
    return seed


@dataclass
class MetaTrainResult:
    model: MetaPrunerModel
    path: str  # <output_dir>/final: model.safetensors, config.json, README.md model card
    log_history: list[dict] = field(default_factory=list)


def meta_train(
    zoo: DataModelZoo,
    data: ClassificationData,
    output_dir: str,
    eval_zoo: DataModelZoo | None = None,
    num_eval_models: int = 1,
    hidden_size: int = 64,
    num_layers: int = 8,
    residual_scale: float = 0.1,
    seed: int = 0,
    dataset: str | None = None,
    resume: bool | str = False,
    args: MetaPrunerTrainingArguments | None = None,
    **training_args,
) -> MetaTrainResult:
    """Meta-train a metanetwork on ``zoo`` — the one path the CLI, the examples and the benchmarks share.

    The metanetwork is sized for the zoo's graphs (``MetaPrunerConfig.for_graphs``) and initialised from ``seed``;
    ``eval_zoo`` (default: the last ``num_eval_models`` data models of ``zoo``, held out) is pruned and probed at each
    evaluation, and scored once more at the end when the last step was not evaluated, so the model card always holds
    validation scores; ``dataset`` (the task data's path or Hub id) is recorded in the model card. Keyword
    arguments go to :class:`MetaPrunerTrainingArguments` (or pass ``args``, e.g. parsed from a command line; then
    ``seed`` only seeds the initialisation). The result is saved (pickle-free) to ``<output_dir>/final``;
    ``resume=True`` continues from the newest checkpoint in ``output_dir`` (a path: from that checkpoint) and returns
    a finished run's metanetwork without training again.
    """
    final = os.path.join(output_dir, "final")
    if isinstance(resume, str) and not os.path.isdir(resume):
        raise FileNotFoundError(f"meta_train: resume checkpoint '{resume}' is not a folder")
    if resume is True and os.path.isfile(os.path.join(final, "config.json")):
        last = get_last_checkpoint(output_dir)
        state = os.path.join(last, "trainer_state.json") if last else ""
        history = json.load(open(state)).get("log_history", []) if os.path.isfile(state) else []
        return MetaTrainResult(MetaPrunerModel.from_pretrained(final).eval(), final, history)
    if eval_zoo is None and num_eval_models > 0:
        zoo, eval_zoo = zoo.split(num_eval_models)
    if args is None:
        defaults = dict(output_dir=output_dir, seed=seed, **({"eval_strategy": "no"} if eval_zoo is None else {}))
        args = MetaPrunerTrainingArguments(**{**defaults, **training_args})
    elif training_args or not isinstance(args, MetaPrunerTrainingArguments):
        raise TypeError("meta_train: pass MetaPrunerTrainingArguments as args= or as keyword arguments, not both")
    elif os.path.abspath(args.output_dir or "") != os.path.abspath(output_dir):
        raise ValueError(f"meta_train: args.output_dir {args.output_dir!r} differs from output_dir {output_dir!r}")
    set_seed(seed)  # the metanetwork's initialisation
    graph = model_to_graph(zoo.model(0), data.example_inputs())
    config = MetaPrunerConfig.for_graphs([graph], hidden_size=hidden_size, num_layers=num_layers,
                                         residual_scale=residual_scale, dataset=dataset)
    trainer = MetaPrunerTrainer(MetaPrunerModel(config), args, zoo, data, eval_zoo=eval_zoo)
    last = resume if isinstance(resume, str) else \
        get_last_checkpoint(output_dir) if resume and os.path.isdir(output_dir) else None
    trainer.train(resume_from_checkpoint=last)
    evaluated = [h["step"] for h in trainer.state.log_history if "eval_probe_accuracy" in h]
    if eval_zoo is not None and not args.load_best_model_at_end and (
            not evaluated or evaluated[-1] != trainer.state.global_step):
        trainer.evaluate()  # scores of the final weights, for the model card
    trainer.save_model(final)
    trainer.accelerator.wait_for_everyone()
    model = trainer.accelerator.unwrap_model(trainer.model).eval()
    return MetaTrainResult(model, final, trainer.state.log_history)
