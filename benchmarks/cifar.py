"""CIFAR benchmark: metanetwork pruning against DepGraph baselines on real data, several seeds, one table.

    python benchmarks/cifar.py --preset cpu --stop_after models    # converged ResNet-20 zoo + base models (once)
    python benchmarks/cifar.py --preset cpu                         # the comparison, <= 2 h on 2 CPU cores after that
    python benchmarks/cifar.py --preset cpu-ablation                # meta-training candidates only: the ablation
    python benchmarks/cifar.py --preset paper                       # ResNet-56 / CIFAR-10 at 2.3x and 3x (GPU)
    python benchmarks/cifar.py --preset paper-vgg19                 # VGG-19-BN / CIFAR-100 at 8.95x (GPU)
    python benchmarks/cifar.py --preset cpu --num_seeds 1 --post_epochs 8    # any field overrides the preset
    python benchmarks/cifar.py --preset cpu --transfer_only true --metanetwork cifar_resnet20-cifar10
                                            # the transfer rows alone, pruned with the shipped metanetwork

Every method prunes the *same* base models (one per seed) and gets the *same* training budget after them:
``pre_epochs`` before pruning and ``post_epochs`` after, each a cosine SGD schedule of the same shape.

- ``depgraph``        (DepGraph w/o SL)  plain training → group-L2 pruning → finetune
- ``depgraph-sl``     (DepGraph + SL)    group-norm sparse learning (γ-weighted, Torch-Pruning's groups) → group-L2
- ``random``          plain training (shared with ``depgraph``) → random channel pruning → finetune
- ``metanetwork``     metanetwork transform → plain training → group-L2 pruning → finetune
- ``metanetwork-sl``  (metanetwork + SL) metanetwork transform → sparse learning → group-L2 pruning → finetune

Accuracy is reported right after pruning (before any finetuning: the pre-prune stage's direct effect) and after
finetuning. The metanetwork is meta-trained on a separate zoo of data models (other seeds, same recipe as the base
models); every candidate (the ``--meta_*`` lists, zipped) is trained with prune-and-probe evaluation on held-out
data models, and the checkpoint and candidate with the best probe accuracy on the validation split are used — the
candidate table is the ablation. Finetuning keeps each run's best epoch on the validation split; the test split is
read only to report. ``--transfer_architectures`` prunes other depths (one base model each, same recipe) with the
same metanetwork (``--transfer_only`` runs only those; ``--metanetwork`` gives a trained one instead of
meta-training). Everything is cached in ``--output_dir``: an interrupted run resumes where it stopped, and a
candidate meta-trained once (in an ablation) is reused.

Writes ``<results_dir>/cifar_<preset>.json`` (all runs, stage wall times, arguments, library versions), ``.md``
(tables) and plots: ``_accuracy.png`` (test accuracy vs speed-up, before and after finetuning), ``_widths.png``
(per-layer kept channels, first seed) and ``_training.png`` (meta-training curves of every candidate).
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import statistics
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import safetensors.torch
import torch
from transformers import HfArgumentParser, set_seed

warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated")  # torch_geometric, at import

import hf_metaprune as hm  # noqa: E402
from hf_metaprune._io import write_json  # noqa: E402
from hf_metaprune.pruning import module_widths  # noqa: E402
from hf_metaprune.training import evaluate_accuracy, evaluate_recalibrated, pre_prune  # noqa: E402

PRESETS: dict[str, dict[str, Any]] = {
    # converged ResNet-20s (>= 84 % test) on the full CIFAR-10 training split; <= 2 h on 2 idle CPU cores once the
    # models exist (training them: python benchmarks/cifar.py --preset cpu --stop_after models, ~20 min each with bf16)
    "cpu": dict(
        architecture="cifar_resnet20", dataset="../shared/data/cifar10", max_train_samples=0, val_size=5000,
        num_seeds=3, base_epochs=20.0, base_learning_rate=0.2, base_warmup=0.15, bf16=True, num_zoo_models=10,
        num_eval_zoo_models=2, zoo_prune_speed_up=[1.6, 1.0, 1.3, 1.0], zoo_finetune_epochs=3.0,
        zoo_finetune_learning_rate=0.02, hidden_size=32, num_layers=4, meta_max_steps=[150], meta_eval_steps=25,
        # the metanetwork: the cpu-ablation's selected candidate (README, "Ablation")
        meta_learning_rate=[1e-3], meta_sparsity_lambda=[0.03], meta_sparsity_relative=[True],
        meta_residual_scale=[0.1], meta_prune_aware_weight=[0.5], meta_prune_aware_temperature=[0.0],
        meta_distill_weight=[0.0], meta_warmup=[0.0], task_batch_size=64, meta_task_batches_per_step=[4],
        speed_ups=[2.0, 3.0], pre_epochs=3.0, post_epochs=6.0, sl_lambda=2.5e-3,
        # widths in multiples of 8: the pruned networks finetune ~1.5x faster in bf16 (README, wall time)
        round_to=8,
        # the winner on validation (README): metanetwork + SL; add metanetwork / metapruning / ... with --methods
        methods=["depgraph-sl", "metanetwork-sl"], models_dir="zoos/cifar10-resnet20",
        transfer_architectures=["cifar_resnet32", "cifar_resnet56"]),
    # the ablation behind the "cpu" preset's metanetwork: every lever as a candidate, meta-training only
    "cpu-ablation": dict(stop_after="metanetwork"),
    # ~80 min on 2 idle CPU cores: 20k training images (2k of them validation), 8-epoch base models
    "cpu-small": dict(
        architecture="cifar_resnet20", dataset="../shared/data/cifar10", max_train_samples=20000, val_size=2000,
        num_seeds=3, base_epochs=8.0, num_zoo_models=4, num_eval_zoo_models=1,
        hidden_size=32, num_layers=4, meta_max_steps=[80], meta_eval_steps=10,
        meta_learning_rate=[2e-3, 1e-3, 1e-3], meta_sparsity_lambda=[3e-2, 3e-2, 1e-3],
        meta_sparsity_relative=[True], meta_residual_scale=[0.1, 0.1, 0.01], task_batch_size=64,
        meta_task_batches_per_step=[2],
        speed_ups=[2.0, 3.0], pre_epochs=2.0, post_epochs=4.0, sl_lambda=2.5e-3),
    # the published ResNet-56 protocol (GPU): 200-epoch base models, 10 data models, 100 + 100 finetuning epochs
    "paper": dict(
        architecture="cifar_resnet56", dataset="../shared/data/cifar10", max_train_samples=0, val_size=5000,
        num_seeds=3, base_epochs=200.0, num_zoo_models=10, num_eval_zoo_models=2, zoo_prune_speed_up=[1.3],
        zoo_finetune_epochs=20.0, hidden_size=64, num_layers=8, meta_residual_scale=[0.01], meta_max_steps=[2000],
        meta_eval_steps=200, meta_learning_rate=[1e-3], meta_sparsity_lambda=[3e-3], meta_sparsity_relative=[False],
        task_batch_size=128, meta_task_batches_per_step=[8], speed_ups=[2.3, 3.0], pre_epochs=100.0, post_epochs=100.0,
        sl_lambda=2.5e-4),
    # VGG-19-BN / CIFAR-100 at 8.95x (GPU); CIFAR-100 is not in ../shared/data: pass a local copy or use the Hub
    "paper-vgg19": dict(
        architecture="cifar_vgg19_bn", dataset="uoft-cs/cifar100", label_column="fine_label", max_train_samples=0,
        val_size=5000, num_seeds=3, base_epochs=200.0, num_zoo_models=10, num_eval_zoo_models=2,
        zoo_prune_speed_up=[1.3], zoo_finetune_epochs=20.0, hidden_size=32, num_layers=8, meta_residual_scale=[0.05],
        meta_max_steps=[2000], meta_eval_steps=200, meta_learning_rate=[1e-3], meta_sparsity_lambda=[3e-3],
        meta_sparsity_relative=[False], task_batch_size=128, meta_task_batches_per_step=[8], speed_ups=[8.95],
        pre_epochs=100.0, post_epochs=100.0, sl_lambda=2.5e-4),
}

# --preset cpu-ablation: the levers of the meta-objective, one candidate each (zipped lists; read across)
ABLATION_CANDIDATES: dict[str, list] = dict(
    #             published  +prune-aware  +schedule,KD  mask only  mask only, λ=0  straight-thr.  λ=0  ε=0.3  4 batches
    meta_prune_aware_weight=[0.0, 0.5, 0.5, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5],
    meta_prune_aware_temperature=[0.0, 0.0, 0.0, 0.0, 0.0, 0.05, 0.0, 0.0, 0.0],
    meta_distill_weight=[0.0, 0.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    meta_warmup=[0.0, 0.0, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    meta_sparsity_lambda=[3e-2, 3e-2, 3e-2, 3e-2, 0.0, 3e-2, 0.0, 3e-2, 3e-2],
    meta_residual_scale=[0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.3, 0.1],
    meta_task_batches_per_step=[2, 2, 2, 2, 2, 2, 2, 2, 4],
)

METHODS = {  # key: (table name, pre-prune stage, pruning criterion)
    "depgraph": ("DepGraph w/o SL", "plain", "group_l2"),
    "depgraph-sl": ("DepGraph + SL", "sparse", "group_l2"),
    "random": ("random", "plain", "random"),
    # a uniform width multiplier (MetaPruning's headline baseline) on the sparse stage's model, group-L2 units kept:
    # against DepGraph + SL it isolates the per-layer width allocation
    "uniform": ("uniform widths + SL", "sparse", "uniform"),
    "metanetwork": ("metanetwork", "metanetwork", "group_l2"),
    "metanetwork-sl": ("metanetwork + SL", "metanetwork-sparse", "group_l2"),
    # MetaPruning: a PruningNet grown from the base model, trained pre_epochs by stochastic structure sampling (the
    # pre-prune budget), evolutionary search (generated weights + BN recalibration, validation split), finetune
    "metapruning": ("MetaPruning", "pruningnet", "search"),
    # GraphPruning: the same, with a GCN over the layer graph feeding the generators, searched by DDPG (AMC's
    # protocol, reward on the validation split); the ablations of its two claims at the same budget: GCN vs local
    # context (graphpruning-evolution vs metapruning) and RL vs evolution (graphpruning vs graphpruning-evolution)
    "graphpruning": ("GraphPruning", "graphpruning", "ddpg"),
    "graphpruning-evolution": ("GraphPruning, evolutionary search", "graphpruning", "search"),
}
SEARCHED_STAGES = ("pruningnet", "graphpruning")
# candidate fields (zipped lists on the command line) -> MetaPrunerTrainingArguments / MetaPrunerConfig fields
CANDIDATE_FIELDS = {
    "meta_learning_rate": "learning_rate", "meta_sparsity_lambda": "sparsity_lambda",
    "meta_sparsity_relative": "sparsity_relative", "meta_residual_scale": "residual_scale",
    "meta_prune_aware_weight": "prune_aware_weight", "meta_prune_aware_temperature": "prune_aware_temperature",
    "meta_distill_weight": "distill_weight", "meta_warmup": "warmup", "meta_max_grad_norm": "max_grad_norm",
    "meta_max_steps": "max_steps", "meta_task_batches_per_step": "task_batches_per_step",
    "meta_ema_decay": "ema_decay",
}


@dataclass
class BenchmarkArguments:
    preset: str = field(default="cpu-small", metadata={"help": f"one of {sorted(PRESETS)}; other flags override it"})
    output_dir: str | None = field(default=None, metadata={"help": "cache of all models (default outputs/cifar-<preset>)"})
    results_dir: str = field(default="results", metadata={"help": "where the JSON, table and plots go"})
    models_dir: str | None = field(default=None, metadata={
        "help": "where the zoo, base and transfer models live (default: output_dir); the cpu preset's are committed"})
    # data
    dataset: str = field(default="../shared/data/cifar10", metadata={"help": "local parquet folder/file or Hub id"})
    image_column: str | None = field(default=None)
    label_column: str | None = field(default=None)
    max_train_samples: int = field(default=0, metadata={"help": "first N training rows (0: all)"})
    val_size: int = field(default=5000, metadata={"help": "validation images carved from those rows"})
    max_test_samples: int = field(default=0, metadata={"help": "first N test rows (0: all)"})
    # base models and the zoo (one recipe for both)
    architecture: str = field(default="cifar_resnet20")
    num_seeds: int = field(default=3, metadata={"help": "base models = seeds 0..num_seeds-1"})
    zoo_seed: int = field(default=3, metadata={"help": "the zoo's first seed (its models: zoo_seed, zoo_seed+1, ...)"})
    base_epochs: float = field(default=8.0)
    base_learning_rate: float = field(default=0.1)
    base_warmup: float = field(default=0.0, metadata={"help": "warm-up fraction of the base / zoo schedule"})
    batch_size: int = field(default=128)
    bf16: bool = field(default=False, metadata={"help": "bf16 autocast for all training (2x on CPUs with AMX)"})
    num_zoo_models: int = field(default=4, metadata={"help": "data models (further seeds), incl. held-out ones"})
    num_eval_zoo_models: int = field(default=1, metadata={"help": "data models held out for prune-and-probe"})
    zoo_prune_speed_up: list[float] = field(default_factory=lambda: [1.0], metadata={
        "help": "lightly prune data models to vary widths; cycles over seeds (1.0: unpruned)"})
    zoo_finetune_epochs: float = field(default=0.0)
    zoo_finetune_learning_rate: float | None = field(default=None, metadata={"help": "default: base_learning_rate"})
    # metanetwork
    hidden_size: int = field(default=32)
    num_layers: int = field(default=4)
    meta_eval_steps: int = field(default=50)
    meta_round_to: int = field(default=0, metadata={
        "help": "meta-training's pruning-aware mask and prune-and-probe keep widths multiples of this (0: as the "
                "criterion leaves them; the cpu preset: rounding here lost on validation, README 'Ablation')"})
    # candidates: every list is zipped (one value: shared by all); each is meta-trained and probed
    meta_max_steps: list[int] = field(default_factory=lambda: [150])
    meta_learning_rate: list[float] = field(default_factory=lambda: [1e-3])
    meta_sparsity_lambda: list[float] = field(default_factory=lambda: [3e-3])
    meta_sparsity_relative: list[bool] = field(default_factory=lambda: [False])
    meta_residual_scale: list[float] = field(default_factory=lambda: [0.1], metadata={"help": "ε"})
    meta_prune_aware_weight: list[float] = field(default_factory=lambda: [0.0], metadata={
        "help": "share of the task loss on W' with the units pruning removes masked out"})
    meta_prune_aware_temperature: list[float] = field(default_factory=lambda: [0.0])
    meta_distill_weight: list[float] = field(default_factory=lambda: [0.0])
    meta_warmup: list[float] = field(default_factory=lambda: [0.0], metadata={
        "help": "warm-up fraction; > 0 switches the constant schedule to warm-up + cosine"})
    meta_max_grad_norm: list[float] = field(default_factory=lambda: [1.0])
    meta_ema_decay: list[float] = field(default_factory=lambda: [0.0], metadata={
        "help": "EMA of the metanetwork's weights (0: off); evaluation and the kept checkpoint use the average"})
    meta_task_batches_per_step: list[int] = field(default_factory=lambda: [2])
    task_batch_size: int = field(default=64)
    probe_finetune_steps: int = field(default=50)
    # pruning and finetuning
    speed_ups: list[float] = field(default_factory=lambda: [2.0, 3.0], metadata={"help": "target MACs speed-ups"})
    pre_epochs: float = field(default=2.0, metadata={"help": "training epochs before pruning (every method)"})
    post_epochs: float = field(default=4.0, metadata={"help": "finetuning epochs after pruning (every method)"})
    finetune_learning_rate: float = field(default=0.01)
    round_to: int = field(default=0, metadata={
        "help": "prune every group to a multiple of this many channels (0: as the criterion leaves them); odd widths "
                "train slowly in bf16 (benchmarks/pruned_training_speed.py). Not applied to the searched methods "
                "(nor to meta-training: --meta_round_to)"})
    sl_lambda: float = field(default=2.5e-3, metadata={"help": "DepGraph sparse-learning strength"})
    pruningnet_hidden_size: int = field(default=32, metadata={"help": "MetaPruning's generator width (paper: 32)"})
    search_population: int = field(default=16, metadata={"help": "MetaPruning's evolutionary search (paper: 50)"})
    search_iterations: int = field(default=4, metadata={"help": "MetaPruning's search iterations (paper: 20)"})
    search_eval_samples: int = field(default=1000, metadata={"help": "validation images per fitness (0: all)"})
    gcn_hidden_size: int = field(default=64, metadata={"help": "GraphPruning's GCN width (64)"})
    rl_episodes: int = field(default=100, metadata={"help": "GraphPruning's DDPG episodes after warm-up (AMC: 800)"})
    rl_warmup: int = field(default=50, metadata={"help": "GraphPruning's random warm-up episodes (AMC: 100)"})
    # reporting
    latency_batch_size: int = field(default=64)
    latency_runs: int = field(default=10)
    disable_tqdm: bool = field(default=True)
    methods: list[str] = field(default_factory=lambda: list(METHODS), metadata={"help": f"of {list(METHODS)}"})
    transfer_architectures: list[str] = field(default_factory=list, metadata={
        "help": "other depths pruned at min(speed_ups) by DepGraph + SL and the metanetwork (one base model each)"})
    metanetwork: str = field(default="", metadata={
        "help": "a trained metanetwork (a shipped name such as cifar_resnet20-cifar10, or a folder) used instead of "
                "meta-training the --meta_* candidates"})
    transfer_only: bool = field(default=False, metadata={
        "help": "run only the transfer rows (--transfer_architectures); writes <results_dir>/cifar_<preset>_transfer"
                ".{json,md}"})
    stop_after: str = field(default="", metadata={
        "help": "'models': train base / zoo / transfer models only; 'metanetwork': also meta-train every candidate "
                "and write the candidate (ablation) table"})
    ship_as: str = field(default="", metadata={
        "help": "also save the selected metanetwork inside the package under this name (a shipped default, "
                "MetaPrunerModel.from_pretrained(name) offline), its card recording this command"})

    def __post_init__(self):
        self.output_dir = self.output_dir or f"outputs/cifar-{self.preset}"
        self.models_dir = self.models_dir or self.output_dir
        n = max(len(getattr(self, name)) for name in CANDIDATE_FIELDS)
        lengths = {f"--{name}": len(getattr(self, name)) for name in CANDIDATE_FIELDS}
        if any(k not in (1, n) for k in lengths.values()):
            shown = ", ".join(f"{name} has {k}" for name, k in lengths.items() if k > 1)
            raise ValueError(f"the candidate lists (--meta_*) are zipped: give each one value or the same number of "
                             f"values ({shown})")
        if self.num_eval_zoo_models < 1 or self.num_zoo_models <= self.num_eval_zoo_models:
            raise ValueError(f"need at least one held-out and one training data model, got num_zoo_models="
                             f"{self.num_zoo_models}, num_eval_zoo_models={self.num_eval_zoo_models}")
        if self.num_seeds < 1 or not self.speed_ups or min(self.speed_ups) <= 1:
            raise ValueError("need num_seeds >= 1 and speed-ups > 1")
        if self.zoo_seed < self.num_seeds:  # a base model must never be one the metanetwork was trained on
            raise ValueError(f"--zoo_seed {self.zoo_seed} overlaps the base models' seeds 0..{self.num_seeds - 1}: "
                             f"give --zoo_seed >= {self.num_seeds}")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ValueError(f"--methods: unknown {unknown}; choose from {list(METHODS)}")
        if self.stop_after not in ("", "models", "metanetwork"):
            raise ValueError(f"--stop_after must be 'models' or 'metanetwork', got '{self.stop_after}'")
        for name in ("round_to", "meta_round_to"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name} must be >= 0 (0: widths as pruned), got {getattr(self, name)}")
        if self.metanetwork and self.stop_after == "metanetwork":
            raise ValueError(f"--stop_after metanetwork meta-trains the candidates; --metanetwork {self.metanetwork} "
                             f"skips that: give one of them")
        if self.transfer_only and (self.stop_after or not self.transfer_architectures):
            raise ValueError("--transfer_only needs --transfer_architectures (got "
                             f"{self.transfer_architectures or 'none'}) and no --stop_after (got '{self.stop_after}')")

    @property
    def rounding(self) -> int | None:
        """``round_to`` as the pruning functions take it (None: widths as the criterion leaves them)."""
        return self.round_to or None

    def candidates(self) -> list[dict]:
        n = max(len(getattr(self, name)) for name in CANDIDATE_FIELDS)
        return [{key: getattr(self, name)[i if len(getattr(self, name)) > 1 else 0]
                 for name, key in CANDIDATE_FIELDS.items()} for i in range(n)]


def parse_args(argv: list[str] | None = None) -> BenchmarkArguments:
    argv = sys.argv[1:] if argv is None else list(argv)
    preset = "cpu-small"
    for i, a in enumerate(argv):
        if a == "--preset" and i + 1 < len(argv):
            preset = argv[i + 1]
        elif a.startswith("--preset="):
            preset = a.split("=", 1)[1]
    if preset not in PRESETS:
        raise ValueError(f"unknown preset '{preset}'; choose one of {sorted(PRESETS)}")
    parser = HfArgumentParser(BenchmarkArguments)
    if preset == "cpu-ablation":  # the cpu preset's models and zoo (same output_dir), other candidates
        parser.set_defaults(**{**PRESETS["cpu"], "output_dir": "outputs/cifar-cpu", **ABLATION_CANDIDATES})
    parser.set_defaults(**PRESETS[preset])
    (args,) = parser.parse_args_into_dataclasses(argv)
    return args


def log(message: str) -> None:
    print(f"[cifar {time.strftime('%H:%M:%S')}] {message}", flush=True)


class Cache:
    """JSON records and pruned models under ``output_dir``, so an interrupted benchmark resumes."""

    def __init__(self, root: str):
        self.root = root
        self.seconds_path = os.path.join(root, "stage_seconds.json")

    def record(self, name: str) -> dict | None:
        path = os.path.join(self.root, name, "record.json")
        return json.load(open(path)) if os.path.isfile(path) else None

    def model(self, name: str) -> torch.nn.Module:
        return hm.load_pruned(os.path.join(self.root, name, "model"))

    def seconds(self) -> dict[str, float]:
        """The wall time of every stage, summed over resumed runs."""
        return json.load(open(self.seconds_path)) if os.path.isfile(self.seconds_path) else {}

    def add_seconds(self, stage: str, seconds: float) -> None:
        """Accumulate the wall time of ``stage`` over resumed runs (cached work adds ~0)."""
        times = self.seconds()
        times[stage] = times.get(stage, 0.0) + seconds
        write_json(self.seconds_path, times)

    def with_pre_prune_stages(self, record: dict, pre_name: str) -> dict:
        """``record`` with the stages of its pre-prune record ``pre_name`` merged in: the whole pipeline in one."""
        pre = self.record(pre_name)
        return dict(record, **{key: {**pre[key], **record[key]} for key in ("stage_val_accuracy", "stage_seconds")})

    def save(self, name: str, model: torch.nn.Module, record: dict, architecture: str) -> None:
        hm.save_pruned(model.cpu(), os.path.join(self.root, name, "model"), architecture=architecture)
        self.save_record(name, record)

    def save_record(self, name: str, record: dict) -> None:
        """Written last, after the stage's files: marks the stage complete."""
        write_json(os.path.join(self.root, name, "record.json"), record)


def candidate_key(args, candidate: dict) -> str:
    """A folder name that changes with everything that shapes the trained metanetwork (cache key)."""
    shared = {k: getattr(args, k) for k in ("hidden_size", "num_layers", "task_batch_size", "meta_eval_steps",
                                            "probe_finetune_steps", "finetune_learning_rate", "speed_ups")}
    candidate = {k: v for k, v in candidate.items() if not (k == "ema_decay" and v == 0.0)}  # added later: hashed
    if args.meta_round_to:
        shared["round_to"] = args.meta_round_to
    blob = json.dumps({**candidate, **shared}, sort_keys=True)  # only when set, so earlier caches stay valid
    return "candidate-" + hashlib.sha256(blob.encode()).hexdigest()[:10]


def train_metanetwork(args, candidate: dict, train_zoo, eval_zoo, data, common: dict):
    """Meta-train one candidate with prune-and-probe checkpoint selection (hm.meta_train); cached in its folder."""
    run_dir = os.path.join(args.output_dir, "metanetwork", candidate_key(args, candidate))
    log_path = os.path.join(run_dir, "log_history.json")
    if not os.path.isfile(log_path):
        schedule = dict(lr_scheduler_type="cosine", warmup_steps=candidate["warmup"]) if candidate["warmup"] > 0 \
            else dict(lr_scheduler_type="constant")
        start = time.time()
        result = hm.meta_train(
            train_zoo, data, run_dir, eval_zoo=eval_zoo, hidden_size=args.hidden_size, num_layers=args.num_layers,
            residual_scale=candidate["residual_scale"], seed=0, dataset=args.dataset, resume=True,
            max_steps=candidate["max_steps"], learning_rate=candidate["learning_rate"],
            sparsity_lambda=candidate["sparsity_lambda"], sparsity_relative=candidate["sparsity_relative"],
            max_grad_norm=candidate["max_grad_norm"], task_batch_size=args.task_batch_size,
            task_batches_per_step=candidate["task_batches_per_step"],
            prune_aware_weight=candidate["prune_aware_weight"], prune_aware_speed_ups=list(args.speed_ups),
            prune_aware_temperature=candidate["prune_aware_temperature"],
            distill_weight=candidate["distill_weight"], ema_decay=candidate["ema_decay"],
            probe_speed_up=min(args.speed_ups), round_to=args.meta_round_to or None,
            probe_finetune_steps=args.probe_finetune_steps, probe_learning_rate=args.finetune_learning_rate,
            eval_strategy="steps", eval_steps=args.meta_eval_steps, save_strategy="steps",
            save_steps=args.meta_eval_steps, save_total_limit=1, load_best_model_at_end=True, logging_steps=5,
            **schedule, **common)
        history = [h for h in result.log_history if "eval_probe_accuracy" in h or "task_loss" in h]
        write_json(log_path, {"candidate": candidate, "seconds": time.time() - start, "history": history})
    with open(log_path) as f:
        log_history = json.load(f)
    final = os.path.join(run_dir, "final")
    model = hm.MetaPrunerModel.from_pretrained(final).eval()
    return model, final, dict(model.config.validation_scores or {}), log_history


def ship(metapruner, name: str, command: str) -> str:
    """Save the selected metanetwork inside the package (methods/metapruner/pretrained/<name>), where
    ``MetaPrunerModel.from_pretrained(name)`` finds it offline; its model card records ``command``."""
    folder = os.path.join(os.path.dirname(hm.__file__), "methods", "metapruner", "pretrained", name)
    metapruner.config.training_command = command
    metapruner.save_pretrained(folder)
    return folder


def summarize(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


def pm(summary: dict, scale: float = 100) -> str:
    """``mean ± std`` of a :func:`summarize`; the mean alone for one value (one seed has no spread to show)."""
    mean = f"{summary['mean'] * scale:.2f}"
    return mean if len(summary["values"]) < 2 else f"{mean} ± {summary['std'] * scale:.2f}"


def markdown_table(base: dict, rows: list[dict], latency_batch_size: int) -> str:
    lines = [f"| method | target | MACs speed-up | params | test acc right after pruning (%) | + BN recalibration (%) "
             f"| val acc (%) | test acc (%) | CPU latency (ms, batch {latency_batch_size}) |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines.append(f"| base model | 1× | 1.00× | {base['params'] / 1e3:.1f}k | – | – | {pm(base['val_accuracy'])} | "
                 f"{pm(base['test_accuracy'])} | {pm(base['latency_s'], 1e3)} |")
    for r in rows:
        lines.append(f"| {r['method']} | {r['target_speed_up']:g}× | {r['speed_up']['mean']:.2f}× | "
                     f"{r['params']['mean'] / 1e3:.1f}k | {pm(r['pruned_test_accuracy'])} | "
                     f"{pm(r['recalibrated_test_accuracy'])} | {pm(r['val_accuracy'])} | "
                     f"{pm(r['test_accuracy'])} | {pm(r['latency_s'], 1e3)} |")
    return "\n".join(lines)


def transfer_markdown(rows: list[dict]) -> str:
    """The transfer rows: other depths pruned by the metanetwork meta-trained on this zoo, beside DepGraph + SL."""
    return "\n".join(
        ["| architecture | method | MACs speed-up | base test acc (%) | right after pruning (%) | "
         "+ BN recalibration (%) | val acc (%) | test acc (%) |", "|---|---|---|---|---|---|---|---|"] +
        [f"| {r['architecture']} | {r['method']} | {r['speed_up']:.2f}× | {r['base_test_accuracy'] * 100:.2f} | "
         f"{r['pruned_test_accuracy'] * 100:.2f} | {r['recalibrated_test_accuracy'] * 100:.2f} | "
         f"{r['val_accuracy'] * 100:.2f} | {r['test_accuracy'] * 100:.2f} |" for r in rows])


def candidate_table(candidates: list[dict], selected: int) -> str:
    """The ablation: every meta-training candidate's prune-and-probe scores on held-out data models (validation)."""
    varying = [k for k in CANDIDATE_FIELDS.values() if len({json.dumps(c[k]) for c in candidates}) > 1] or \
        ["prune_aware_weight"]
    lines = ["| # | " + " | ".join(varying) + " | transformed (%) | right after pruning (%) | probe (%) | "
             "identity probe (%) | meta-training (min) |", "|---" * (len(varying) + 6) + "|"]
    for i, c in enumerate(candidates):
        v = c["validation_scores"]
        pct = lambda k: f"{v[k] * 100:.2f}" if k in v else "–"  # noqa: E731
        mark = " (selected)" if i == selected else ""
        lines.append(f"| {i}{mark} | " + " | ".join(str(c[k]) for k in varying) + f" | {pct('transformed_accuracy')} | "
                     f"{pct('pruned_accuracy')} | {pct('probe_accuracy')} | {pct('baseline_probe_accuracy')} | "
                     f"{c['seconds'] / 60:.1f} |")
    return "\n".join(lines)


def _style():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot(summary: dict, widths: dict[str, dict[str, int]], speed_up: float, path_prefix: str) -> list[str]:
    """Test accuracy vs speed-up, before and after finetuning (mean ± std per method); kept channels per layer."""
    plt = _style()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4), sharex=True)
    base = summary["base"]["test_accuracy"]
    methods = list(dict.fromkeys(r["method"] for r in summary["rows"]))
    for ax, key, title in ((axes[0], "pruned_test_accuracy", "right after pruning"),
                           (axes[1], "recalibrated_test_accuracy", "+ BN recalibration"),
                           (axes[2], "test_accuracy", "after finetuning")):
        ax.axhline(base["mean"] * 100, color="gray", ls="--", label="base model")
        for method in methods:
            rows = [r for r in summary["rows"] if r["method"] == method]
            ax.errorbar([r["speed_up"]["mean"] for r in rows], [r[key]["mean"] * 100 for r in rows],
                        yerr=[r[key]["std"] * 100 for r in rows], marker="o", capsize=3, label=method)
        ax.set_xlabel("MACs speed-up")
        ax.set_ylabel("test accuracy (%)")
        seeds = summary["arguments"]["num_seeds"]
        ax.set_title(f"{title} (mean ± std, {seeds} seeds)" if seeds > 1 else f"{title} (1 seed)")
    axes[2].legend(fontsize=8)
    fig.suptitle(summary["arguments"]["architecture"])
    fig.tight_layout()
    paths = [f"{path_prefix}_accuracy.png"]
    fig.savefig(paths[0], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, 4))
    layers = list(widths["base"])
    for name, w in widths.items():
        if name != "base":
            ax.plot(range(len(layers)), [w[layer] / widths["base"][layer] for layer in layers], marker=".",
                    label=name)
    ax.set_xticks(range(len(layers)), layers, rotation=90, fontsize=6)
    ax.set_ylabel("kept output channels (fraction)")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"{summary['arguments']['architecture']}: output channels kept per layer at {speed_up:g}× (seed 0)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(f"{path_prefix}_widths.png")
    fig.savefig(paths[1], dpi=120)
    plt.close(fig)
    return paths


def plot_training_curves(candidates: list[dict], path: str) -> str:
    """Meta-training curves of every candidate: task losses, sparsity term, prune-and-probe accuracy."""
    plt = _style()
    panels = (("ce_loss", "CE of W'"), ("pruned_ce_loss", "CE of W' with the pruned units masked"),
              ("sparsity_term", "λ · sparsity"), ("eval_pruned_accuracy", "held-out: right after pruning (val)"),
              ("eval_probe_accuracy", "held-out: probe accuracy (val)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.5))
    for i, c in enumerate(candidates):
        for ax, (key, title) in zip(axes, panels):
            points = [(h["step"], h[key]) for h in c["history"] if key in h]
            if points:
                ax.plot(*zip(*points), marker="." if key.startswith("eval") else None, label=f"#{i}")
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("meta-training step")
    axes[-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    cpu = not torch.cuda.is_available()
    common = dict(report_to="none", disable_tqdm=args.disable_tqdm, use_cpu=cpu)
    training = dict(common, bf16=True) if args.bf16 else common  # meta-training stays in float32
    finetune_kwargs = dict(batch_size=args.batch_size, learning_rate=args.finetune_learning_rate, logging_steps=50,
                           **training)
    cache = Cache(args.output_dir)

    data = hm.load_image_classification(args.dataset, val_size=args.val_size, seed=0,
                                        max_train_samples=args.max_train_samples or None,
                                        max_test_samples=args.max_test_samples or None,
                                        image_column=args.image_column, label_column=args.label_column)
    x = data.example_inputs()
    log(f"{args.preset}: {args.architecture} on {args.dataset}: {len(data.train)} train / "
        f"{len(data.validation)} validation / {len(data.test)} test images, {torch.get_num_threads()} threads")

    # 1. the zoo (seeds zoo_seed, zoo_seed+1, ...), the base models (seeds 0..num_seeds-1) and the transfer base
    # models: one recipe, each trained when first needed (the ablation needs only the zoo, a given --metanetwork not
    # even that; the transfer rows come last)
    zoo_kwargs = dict(batch_size=args.batch_size, learning_rate=args.base_learning_rate, logging_steps=50,
                      warmup_steps=args.base_warmup, **training)

    def base_models(architecture: str, folder: str, num_models: int, seed: int, **kwargs) -> hm.DataModelZoo:
        t = time.time()
        models = hm.train_zoo(architecture, data, os.path.join(args.models_dir, folder), num_models=num_models,
                              epochs=args.base_epochs, seed=seed, **zoo_kwargs, **kwargs)
        cache.add_seconds(folder.split("-")[0] + "_models", time.time() - t)
        return models

    zoo = lambda: base_models(args.architecture, "zoo", args.num_zoo_models, seed=args.zoo_seed,  # noqa: E731
                              prune_speed_up=args.zoo_prune_speed_up, finetune_epochs=args.zoo_finetune_epochs,
                              finetune_learning_rate=args.zoo_finetune_learning_rate)
    transfer_bases = lambda: {arch: base_models(arch, f"transfer-{arch}", 1, seed=0)  # noqa: E731
                              for arch in args.transfer_architectures}
    if args.stop_after == "models":
        zoo()
        base_models(args.architecture, "base", args.num_seeds, seed=0)
        transfer_bases()
        return {}

    # 2. meta-training: every candidate, selected by prune-and-probe accuracy on the validation split (or a given
    # trained metanetwork, cached under a digest of its weights)
    t = time.time()
    candidates = []
    if args.metanetwork:
        metapruner = hm.MetaPrunerModel.from_pretrained(args.metanetwork).eval()
        digest = hashlib.sha256(safetensors.torch.save({k: v.contiguous() for k, v in metapruner.state_dict().items()}))
        meta_key, best = f"given-{digest.hexdigest()[:10]}", None
        log(f"metanetwork: {args.metanetwork} (validation scores {metapruner.config.validation_scores}), no "
            f"meta-training")
    train_zoo, eval_zoo = (None, None) if args.metanetwork else zoo().split(args.num_eval_zoo_models)
    for i, candidate in enumerate([] if args.metanetwork else args.candidates()):
        tc = time.time()
        _, path, scores, history = train_metanetwork(args, candidate, train_zoo, eval_zoo, data, common)
        candidates.append(dict(candidate, path=path, validation_scores=scores, seconds=history["seconds"],
                               history=history["history"]))
        log(f"metanetwork candidate {i} {candidate}: {scores} ({time.time() - tc:.0f}s)")
    if candidates:
        best = max(range(len(candidates)), key=lambda i: candidates[i]["validation_scores"].get("probe_accuracy", -1))
        metapruner = hm.MetaPrunerModel.from_pretrained(candidates[best]["path"]).eval()
        cache.add_seconds("meta_training", time.time() - t)
        log(f"selected candidate {best} (probe accuracy {candidates[best]['validation_scores'].get('probe_accuracy')})")
        meta_key = os.path.basename(os.path.dirname(candidates[best]["path"]))
    if args.ship_as:
        command = "python benchmarks/cifar.py " + " ".join(sys.argv[1:] if argv is None else argv)
        log(f"shipped the selected metanetwork as '{args.ship_as}': {ship(metapruner, args.ship_as, command)}")
    tag = lambda stage: f"{stage}-{meta_key}" if stage.startswith("metanetwork") else stage  # noqa: E731  (cache)
    rounded = f"-round{args.round_to}" if args.round_to else ""  # pruned models' cache names
    os.makedirs(args.results_dir, exist_ok=True)
    prefix = os.path.join(args.results_dir, f"cifar_{args.preset}")
    curves = [plot_training_curves(candidates, f"{prefix}_training.png")] if candidates else []
    ablation = candidate_table(candidates, best) if candidates else f"(not meta-trained here: --metanetwork " \
        f"{args.metanetwork})"
    if args.stop_after == "metanetwork":
        summary = {"preset": args.preset, "candidate_table": ablation, "metanetwork_candidates": candidates,
                   "selected_candidate": best, "arguments": asdict(args), "versions": hm.library_versions(),
                   "plots": curves}
        with open(f"{prefix}_candidates.json", "w") as f:
            json.dump(summary, f, indent=2)
        with open(f"{prefix}_candidates.md", "w") as f:
            f.write(ablation + "\n")
        print(f"\n{ablation}\nwritten to {prefix}_candidates.json, .md and {curves[0]}", flush=True)
        return summary

    def transfer_rows() -> list[dict]:
        """The metanetwork (meta-trained on this zoo, or given) on other depths, against DepGraph + SL; the
        metanetwork rows are those of args.methods (the preset's: metanetwork + SL)."""
        rows = []
        transfer_methods = ["depgraph-sl"] + [m for m in args.methods if METHODS[m][1].startswith("metanetwork")]
        for arch, zoo_of_one in transfer_bases().items():
            base = zoo_of_one.model(0)
            for method, stage, importance in (METHODS[m] for m in transfer_methods):
                name = f"transfer-{arch}/{tag(stage)}-{importance}-{min(args.speed_ups):g}x{rounded}"
                record = cache.record(name)
                if record is None:
                    pre_name = f"transfer-{arch}/pre-{tag(stage)}"
                    pre = _pre_prune_stage(args, cache, 0, stage, base, data, metapruner, finetune_kwargs,
                                           name=pre_name, architecture=arch)
                    record, model = _prune_and_finetune(args, cache, name, pre.model, data, min(args.speed_ups),
                                                        importance, 0, finetune_kwargs)
                    record = cache.with_pre_prune_stages(record, pre_name)
                    record.update(method=method, architecture=arch, seed=0, target_speed_up=min(args.speed_ups),
                                  base_val_accuracy=zoo_of_one.dataset["val_accuracy"][0],
                                  base_test_accuracy=evaluate_accuracy(base, data, split="test"))
                    cache.save(name, model, record, arch)
                    log(f"transfer {arch} {method}: {record['speed_up']:.2f}x, test {record['test_accuracy']:.4f}")
                rows.append(record)
        return rows

    if args.transfer_only:
        transfer = transfer_rows()
        table = transfer_markdown(transfer)
        summary = {"preset": args.preset, "transfer_table": table, "transfer": transfer,
                   "metanetwork": args.metanetwork or candidates[best]["path"], "candidate_table": ablation,
                   "metanetwork_candidates": candidates, "selected_candidate": best, "arguments": asdict(args),
                   "stage_seconds": cache.seconds(),
                   "torch_threads": torch.get_num_threads(), "versions": hm.library_versions()}
        with open(f"{prefix}_transfer.json", "w") as f:
            json.dump(summary, f, indent=2)
        with open(f"{prefix}_transfer.md", "w") as f:
            f.write(f"Transfer (1 seed; metanetwork: {summary['metanetwork']}):\n\n{table}\n")
        print(f"\n{table}\nwritten to {prefix}_transfer.json, .md", flush=True)
        return summary

    # 3. every method on every base model: pre-prune stage once, then prune to each speed-up and finetune
    bases = base_models(args.architecture, "base", args.num_seeds, seed=0)
    log(f"base models: val {list(bases.dataset['val_accuracy'])}")
    methods = [METHODS[m] for m in args.methods]
    runs, base_rows, widths, directs = [], [], {}, []
    for seed in range(args.num_seeds):
        base = bases.model(seed)
        base_record = cache.record(f"seed-{seed}/base")
        if base_record is None:
            t = time.time()
            base_record = {"val_accuracy": evaluate_accuracy(base, data),
                           "test_accuracy": evaluate_accuracy(base, data, split="test")}
            base_record["macs"], base_record["params"] = hm.count_macs_and_params(base, x)
            cache.save(f"seed-{seed}/base", base, base_record, args.architecture)
            cache.add_seconds("evaluation", time.time() - t)
        models = {"base": base}
        pre_models: dict[str, hm.training.PrePruneResult] = {}
        for method, stage, importance in methods:
            for speed_up in args.speed_ups:
                name = f"seed-{seed}/{tag(stage)}-{importance}-{speed_up:g}x{rounded}"
                record = cache.record(name)
                if record is None:
                    if stage not in pre_models:
                        stage_fn = _pruningnet_stage if stage in SEARCHED_STAGES else _pre_prune_stage
                        pre_models[stage] = stage_fn(args, cache, seed, stage, base, data, metapruner,
                                                     finetune_kwargs, name=f"seed-{seed}/pre-{tag(stage)}")
                    if stage in SEARCHED_STAGES:
                        record, model = _search_and_finetune(args, cache, name, pre_models[stage], base_record["macs"],
                                                             data, speed_up, seed, finetune_kwargs, importance)
                    else:
                        record, model = _prune_and_finetune(args, cache, name, pre_models[stage].model, data,
                                                            speed_up, importance, seed, finetune_kwargs)
                    record.update(method=method, seed=seed, target_speed_up=speed_up)
                    cache.save(name, model, record, args.architecture)
                    log(f"seed {seed} {method} {speed_up:g}x: {record['speed_up']:.2f}x, right after pruning test "
                        f"{record['pruned_test_accuracy']:.4f} (BN recalibrated {record['recalibrated_test_accuracy']:.4f})"
                        f"; finetuned val {record['val_accuracy']:.4f} test {record['test_accuracy']:.4f}")
                models[(method, speed_up)] = cache.model(name)
                runs.append(cache.with_pre_prune_stages(record, f"seed-{seed}/pre-{tag(stage)}"))
        # no training at all: the transform's own effect
        direct = cache.record(f"seed-{seed}/direct-{meta_key}{rounded}")
        if direct is None:
            t = time.time()
            transformed = metapruner.transform(base, x)
            direct = {"seed": seed, "transformed_val_accuracy": evaluate_accuracy(transformed, data), "speed_ups": {}}
            for speed_up in args.speed_ups:
                accs = {}
                for key, model in (("base", base), ("transformed", transformed)):
                    pruned = hm.prune_to_speedup(model, x, speed_up, round_to=args.rounding).model
                    accs[key] = {split: evaluate_accuracy(pruned, data, split=split) for split in ("validation", "test")}
                    accs[key]["recalibrated_test"] = evaluate_recalibrated(pruned, data, ("test",), seed)["test"]
                direct["speed_ups"][f"{speed_up:g}"] = accs
            cache.save(f"seed-{seed}/direct-{meta_key}{rounded}", transformed, direct, args.architecture)
            cache.add_seconds("evaluation", time.time() - t)
        directs.append(direct)
        t = time.time()  # CPU latency of every model of this seed, interleaved so they share the noise
        cpu_models = {k: copy.deepcopy(m).cpu().eval() for k, m in models.items()}
        keys = list(cpu_models)
        latency = hm.pruning.measure_latency({str(i): cpu_models[k] for i, k in enumerate(keys)},
                                             data.example_inputs(args.latency_batch_size), runs=args.latency_runs,
                                             channels_last=True)
        base_rows.append(dict(base_record, latency_s=latency["0"]))
        for i, k in enumerate(keys[1:], start=1):
            next(r for r in runs if r["seed"] == seed and (r["method"], r["target_speed_up"]) == k)[
                "latency_s"] = latency[str(i)]
        if seed == 0:
            top = max(args.speed_ups)
            widths = {"base": _out_widths(base)}
            widths.update({method: _out_widths(models[(method, top)]) for method, _, _ in methods})
        cache.add_seconds("evaluation", time.time() - t)

    # 4. aggregate, write JSON / table / plots: once before the transfer rows (so the table exists after <= 2 h),
    # once more with them
    def report(transfer: list[dict]) -> dict:
        stage_seconds = cache.seconds()
        stage_seconds["total"] = sum(stage_seconds.values())

        rows = []
        for speed_up in args.speed_ups:
            for method, _, _ in methods:
                rs = [r for r in runs if r["method"] == method and r["target_speed_up"] == speed_up]
                rows.append({"method": method, "target_speed_up": speed_up,
                             **{k: summarize([r[k] for r in rs]) for k in
                                ("speed_up", "params", "pruned_val_accuracy", "pruned_test_accuracy",
                                 "recalibrated_val_accuracy", "recalibrated_test_accuracy", "val_accuracy",
                                 "test_accuracy", "latency_s")}})
        base_summary = {k: summarize([r[k] for r in base_rows]) for k in ("val_accuracy", "test_accuracy", "latency_s")}
        base_summary["params"] = base_rows[0]["params"]
        base_summary["macs"] = base_rows[0]["macs"]
        table = markdown_table(base_summary, rows, args.latency_batch_size)
        direct_rows = []
        for speed_up in args.speed_ups:
            for key, label in (("base", "base model, pruned"), ("transformed", "metanetwork transform, pruned")):
                cells = [summarize([d["speed_ups"][f"{speed_up:g}"][key][split] for d in directs])
                         for split in ("test", "recalibrated_test")]
                direct_rows.append(f"| {label} | {speed_up:g}× | " + " | ".join(pm(c) for c in cells) + " |")
        direct_table = "\n".join(["| no training at all | target | test acc right after pruning (%) | "
                                  "+ BN recalibration (%) |", "|---|---|---|---|"] + direct_rows)
        summary = {"preset": args.preset, "table": table, "candidate_table": ablation,
                   "transfer_table": transfer_markdown(transfer),
                   "direct_table": direct_table, "direct": directs,
                   "base": base_summary, "rows": rows, "runs": runs, "base_runs": base_rows, "transfer": transfer,
                   "metanetwork_candidates": candidates, "selected_candidate": best,
                   "stage_seconds": stage_seconds, "torch_threads": torch.get_num_threads(),
                   "device": "cuda" if not cpu else "cpu", "arguments": asdict(args),
                   "versions": hm.library_versions()}
        summary["plots"] = plot(summary, widths, max(args.speed_ups), prefix) + curves
        with open(f"{prefix}.json", "w") as f:
            json.dump(summary, f, indent=2)
        times = ", ".join(f"{k} {v / 60:.1f} min" for k, v in stage_seconds.items())
        text = (f"{table}\n\n{direct_table}\n\nWall time: {times}.\n\nMeta-training candidates (prune-and-probe on "
                f"held-out data models, validation split):\n\n{ablation}\n")
        for method in sorted({r["method"] for r in runs if "search_seconds" in r}):
            searches = [r for r in runs if r["method"] == method]
            how = (f"DDPG, {args.rl_warmup} warm-up + {args.rl_episodes} episodes" if method == "GraphPruning" else
                   f"population {args.search_population}, {args.search_iterations} iterations")
            text += (f"\n{method}'s search cost: {statistics.mean(r['search_seconds'] for r in searches) / 60:.1f} "
                     f"min per search ({statistics.mean(r['genes_evaluated'] for r in searches):.0f} genes, {how}), "
                     "included in prune + finetune.\n")
        if transfer:
            text += f"\nTransfer (1 seed):\n\n{summary['transfer_table']}\n"
        with open(f"{prefix}.md", "w") as f:
            f.write(text)
        print(f"\n{text}\nwritten to {prefix}.json, .md and {', '.join(summary['plots'])}", flush=True)
        return summary

    summary = report([])

    # 5. transfer: the metanetwork on other depths, against DepGraph + SL
    transfer = transfer_rows()
    if transfer:
        summary = report(transfer)
    return summary


def _prune_and_finetune(args, cache: Cache, name: str, model, data, speed_up: float, importance: str, seed: int,
                        finetune_kwargs) -> tuple[dict, torch.nn.Module]:
    """Prune a copy of ``model``, measure it right away (validation and test), then finetune ``post_epochs``."""
    t = time.time()
    set_seed(seed)  # random pruning draws from torch's generator
    x = data.example_inputs()
    if importance == "uniform":
        widths = hm.ChannelGroups.from_model(model, x).uniform_widths(speed_up, round_to=args.rounding)
        pruned = hm.prune_to_widths(model, x, widths, keep="group_l2")
    else:
        pruned = hm.prune_to_speedup(model, x, speed_up, importance=importance, round_to=args.rounding)
    prune_seconds = time.time() - t
    record = {"speed_up": pruned.speed_up, "macs": pruned.macs_after, "params": pruned.params_after,
              "pruned_val_accuracy": evaluate_accuracy(pruned.model, data),
              "pruned_test_accuracy": evaluate_accuracy(pruned.model, data, split="test")}
    record.update({f"recalibrated_{'val' if split == 'validation' else split}_accuracy": acc for split, acc in
                   evaluate_recalibrated(pruned.model, data, ("validation", "test"), seed).items()})
    t = time.time()
    tuned = hm.training.finetune(pruned.model, data, os.path.join(args.output_dir, "runs", name),
                                 epochs=args.post_epochs, seed=seed, **finetune_kwargs)
    record.update(val_accuracy=tuned.val_accuracy, test_accuracy=evaluate_accuracy(tuned.model, data, split="test"),
                  stage_val_accuracy={"pruned": record["pruned_val_accuracy"], "finetuned": tuned.val_accuracy},
                  stage_seconds={"prune": prune_seconds, "finetune": time.time() - t})
    cache.add_seconds("prune_and_finetune", time.time() - t + prune_seconds)
    return record, tuned.model


def _pre_prune_stage(args, cache: Cache, seed: int, stage: str, base, data, metapruner, finetune_kwargs, name: str,
                     architecture: str | None = None):
    """The pre-prune stage of one method family on one base model (cached under ``name``)."""
    record = cache.record(name)
    if record is not None:
        result = hm.training.PrePruneResult(cache.model(name), record["stage_seconds"], record["stage_val_accuracy"])
    else:
        t = time.time()
        result = pre_prune(base, data, os.path.join(args.output_dir, "runs", name),
                           metapruner=metapruner if stage.startswith("metanetwork") else None, epochs=args.pre_epochs,
                           sparsity_lambda=args.sl_lambda if stage in ("sparse", "metanetwork-sparse") else 0.0,
                           seed=seed, **finetune_kwargs)
        cache.add_seconds("pre_prune", time.time() - t)
        cache.save(name, result.model, {"stage_seconds": result.stage_seconds,
                                        "stage_val_accuracy": result.stage_val_accuracy},
                   architecture or args.architecture)
        log(f"{name}: {result.stage_val_accuracy} ({time.time() - t:.0f}s)")
    return result


def _pruningnet_stage(args, cache: Cache, seed: int, stage: str, base, data, metapruner, finetune_kwargs,
                      name: str) -> "hm.PruningNetModel":
    """MetaPruning's (or GraphPruning's) pre-prune stage: a PruningNet grown from ``base`` (its generators start at
    the base weights), trained ``pre_epochs`` by stochastic structure sampling with the finetuning recipe (cached
    under ``name``)."""
    from transformers import TrainingArguments

    cls = hm.get_method(stage).model_class  # the stages are named after the registered methods
    folder = os.path.join(args.output_dir, name, stage)
    if cache.record(name) is not None:
        return cls.from_pretrained(folder).eval()
    t = time.time()
    extra = {"gcn_hidden_size": args.gcn_hidden_size} if stage == "graphpruning" else {}
    pruningnet = cls.from_network(base, hidden_size=args.pruningnet_hidden_size, dataset=args.dataset, **extra)
    training = TrainingArguments(
        output_dir=os.path.join(args.output_dir, "runs", name), num_train_epochs=args.pre_epochs,
        per_device_train_batch_size=args.batch_size, learning_rate=args.finetune_learning_rate, optim="sgd",
        weight_decay=5e-4, lr_scheduler_type="cosine", save_strategy="no", logging_steps=50, seed=seed,
        report_to="none", disable_tqdm=args.disable_tqdm, use_cpu=finetune_kwargs.get("use_cpu", False),
        bf16=finetune_kwargs.get("bf16", False))  # the finetuning's precision and (Nesterov SGD) optimizer
    trainer = hm.PruningNetTrainer(pruningnet, training, data)
    trainer.train()
    pruningnet = trainer.accelerator.unwrap_model(trainer.model).eval()
    pruningnet.save_pretrained(folder)
    full = pruningnet.generate(pruningnet.full_gene(), hm.pruning.recalibration_batches(data, seed=seed)).model
    record = {"stage_seconds": {stage: time.time() - t},
              "stage_val_accuracy": {f"{stage}_full_width": evaluate_accuracy(full, data)}}
    cache.save_record(name, record)
    cache.add_seconds("pre_prune", time.time() - t)
    log(f"{name}: {record['stage_val_accuracy']} ({time.time() - t:.0f}s)")
    return pruningnet


def _search_and_finetune(args, cache: Cache, name: str, pruningnet, base_macs: float, data, speed_up: float,
                         seed: int, finetune_kwargs, search: str = "search") -> tuple[dict, torch.nn.Module]:
    """MetaPruning / GraphPruning at one speed-up: the evolutionary (``search``) or DDPG (``ddpg``) search on the
    validation split (its cost recorded), the searched network with generated weights measured right away (as
    generated, and BN-recalibrated), then finetuned."""
    t = time.time()
    population = args.search_population
    evaluation = dict(eval_samples=args.search_eval_samples or None, seed=seed, disable_tqdm=args.disable_tqdm)
    if search == "ddpg":
        found = pruningnet.search(data, speed_up, episodes=args.rl_episodes, warmup=args.rl_warmup, **evaluation)
    else:
        found = pruningnet.evolutionary_search(data, speed_up, num_iterations=args.search_iterations,
                                               population=population, top_k=population,
                                               num_parents=max(2, population // 5), mutations=population // 2,
                                               crossovers=population // 2, **evaluation)
    search_seconds = time.time() - t
    x = data.example_inputs()
    raw = pruningnet.generate(found.gene).model  # BatchNorm statistics as generated: right after pruning
    model = found.result.model  # recalibrated on 2000 training images, as the search scored it
    macs, params = hm.count_macs_and_params(model, x)
    record = {"speed_up": base_macs / macs, "macs": macs, "params": params,
              "pruned_val_accuracy": evaluate_accuracy(raw, data),
              "pruned_test_accuracy": evaluate_accuracy(raw, data, split="test"),
              "recalibrated_val_accuracy": evaluate_accuracy(model, data),
              "recalibrated_test_accuracy": evaluate_accuracy(model, data, split="test"),
              "search_seconds": search_seconds, "genes_evaluated": found.evaluated, "gene": list(found.gene),
              "search_val_accuracy": found.val_accuracy}
    t = time.time()
    tuned = hm.training.finetune(model, data, os.path.join(args.output_dir, "runs", name), epochs=args.post_epochs,
                                 seed=seed, **finetune_kwargs)
    record.update(val_accuracy=tuned.val_accuracy, test_accuracy=evaluate_accuracy(tuned.model, data, split="test"),
                  stage_val_accuracy={"pruned": record["pruned_val_accuracy"], "finetuned": tuned.val_accuracy},
                  stage_seconds={"search": search_seconds, "finetune": time.time() - t})
    cache.add_seconds("prune_and_finetune", time.time() - t + search_seconds)
    return record, tuned.model


def _out_widths(model: torch.nn.Module) -> dict[str, int]:
    return {name: w["out"] for name, w in module_widths(model).items() if name not in ("fc", "head", "classifier")}


if __name__ == "__main__":
    main()
