"""``hf-metaprune``: the library's main jobs from the shell, one subcommand each.

    hf-metaprune prune MODEL --speed-up 2 [--method metapruner] [--dataset PATH --finetune-epochs 1] --output DIR
    hf-metaprune evaluate MODEL --dataset PATH
    hf-metaprune bench MODEL --speed-ups 2 3 --methods depgraph metapruner --dataset PATH --output DIR
    hf-metaprune zoo ARCHITECTURE --dataset PATH --num-models 10 --output-dir DIR
    hf-metaprune meta-train --zoo DIR --dataset PATH --output-dir DIR [every MetaPrunerTrainingArguments flag]
    hf-metaprune env

MODEL is a timm model name, a folder (a 🤗 model, a pruned checkpoint, or a data-model zoo with ``--model-index``)
or a 🤗 Hub id. Arguments are dataclasses parsed by ``HfArgumentParser``, as in transformers' own scripts; every
subcommand has ``--help``. Each subcommand wraps one library call, so what the CLI does a script can do the same way.
"""
from __future__ import annotations

import copy
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import HfArgumentParser

from ._io import looks_like_local_path, missing_local_path

PRUNE_METHODS = ("metapruner", "depgraph", "depgraph-sl", "random")


# ---- arguments ------------------------------------------------------------------------------------------------------
@dataclass
class ModelArguments:
    model: str = field(metadata={"help": "timm model name, a folder (🤗 model, pruned checkpoint, data-model zoo) "
                                         "or a 🤗 Hub id; may be given first, without the flag"})
    model_index: int = field(default=0, metadata={"help": "which data model, when MODEL is a data-model zoo"})
    pretrained: bool = field(default=False, metadata={
        "help": "timm names only: load timm's pretrained weights (a download) instead of a random initialisation"})


@dataclass
class DataArguments:
    dataset: str | None = field(default=None, metadata={
        "help": "task data: a local folder / parquet file or a 🤗 Hub dataset id (images or text)"})
    val_size: int = field(default=5000, metadata={"help": "validation rows carved from the training split"})
    max_train_samples: int | None = field(default=None, metadata={"help": "use the first N training rows"})
    max_test_samples: int | None = field(default=None, metadata={"help": "use the first N test rows"})


@dataclass
class PruneArguments:
    output: str = field(metadata={"help": "folder the pruned model is written to (must not hold another checkpoint)"})
    speed_up: float = field(default=2.0, metadata={"help": "target MACs speed-up (> 1)"})
    method: str = field(default="metapruner", metadata={"help": f"one of {PRUNE_METHODS}"})
    metapruner: str | None = field(default=None, metadata={
        "help": "metanetwork: a shipped name (see `hf-metaprune env`), a folder or a Hub id; default: the shipped "
                "one for MODEL's architecture"})
    pre_epochs: float = field(default=0.0, metadata={"help": "training before pruning (after the transform)"})
    finetune_epochs: float = field(default=0.0, metadata={"help": "finetuning after pruning (needs --dataset)"})
    learning_rate: float = field(default=0.05, metadata={"help": "finetuning learning rate (SGD, cosine)"})
    batch_size: int = field(default=128)
    sl_lambda: float = field(default=2.5e-3, metadata={"help": "sparse-learning λ of depgraph-sl's pre-prune stage"})
    bf16: bool = field(default=False, metadata={"help": "train in bfloat16 autocast"})
    latency_batch_size: int = field(default=64, metadata={"help": "batch size the CPU latency is measured at"})
    seed: int = field(default=0)


@dataclass
class BenchArguments(PruneArguments):
    speed_ups: list[float] = field(default_factory=lambda: [2.0], metadata={"help": "target MACs speed-ups"})
    methods: list[str] = field(default_factory=lambda: ["depgraph", "metapruner"], metadata={
        "help": f"methods compared side by side, with the same budget (from {PRUNE_METHODS})"})


@dataclass
class ZooArguments:
    architecture: str = field(metadata={"help": "timm model name; may be given first, without the flag"})
    output_dir: str = field(metadata={"help": "the zoo is written to <output_dir>/zoo (resumable)"})
    num_models: int = field(default=10)
    epochs: float = field(default=20.0)
    seed: int = field(default=0, metadata={"help": "data models get seeds seed, seed+1, ..."})
    prune_speed_up: list[float] | None = field(default=None, metadata={
        "help": "light pruning so widths vary, cycled over the seeds (1.0: unpruned), e.g. 1.6 1.0 1.3 1.0"})
    finetune_epochs: float = field(default=3.0, metadata={"help": "finetuning after the light pruning"})
    finetune_learning_rate: float = field(default=0.02, metadata={"help": "learning rate of that finetuning"})
    learning_rate: float = field(default=0.2, metadata={"help": "peak of the one-cycle schedule (SGD Nesterov)"})
    warmup: float = field(default=0.15, metadata={"help": "warm-up share of the steps"})
    batch_size: int = field(default=128)
    bf16: bool = field(default=False)


@dataclass
class MetaTrainArguments:
    zoo: str = field(default=None, metadata={"help": "a data-model zoo folder (hf-metaprune zoo) or Hub id"})
    num_eval_models: int = field(default=1, metadata={"help": "last data models held out for prune-and-probe"})
    hidden_size: int = field(default=64, metadata={"help": "width of the metanetwork's node and edge states"})
    num_layers: int = field(default=8, metadata={"help": "message-passing layers"})
    residual_scale: float = field(default=0.1, metadata={"help": "ε: step size of the metanetwork's edits"})


# ---- loading what the user names -----------------------------------------------------------------------------------
@dataclass
class LoadedModel:
    model: nn.Module
    kind: str  # "timm" (timm / CIFAR CNNs, pruned checkpoints, zoo models of those) or "transformers"
    zoo: Any = None  # the DataModelZoo MODEL came from: its recipe says which validation split is unseen


def load_model(source: str, model_index: int = 0, pretrained: bool = False) -> LoadedModel:
    """The model MODEL names; what cannot be loaded raises an error naming MODEL."""
    import timm
    import transformers

    from .pruning import load_pruned
    from .pruning.serialization import CONFIG_NAME as PRUNED_CONFIG
    from .training import DataModelZoo

    path = os.path.expanduser(source)
    if os.path.isdir(path):
        names = set(os.listdir(path))
        if PRUNED_CONFIG in names:
            return LoadedModel(load_pruned(path), "timm")
        if "dataset_info.json" in names or "state.json" in names or os.path.isdir(os.path.join(path, "zoo")):
            zoo = DataModelZoo.load(path)
            if not 0 <= model_index < len(zoo):
                raise ValueError(f"--model_index {model_index}: the zoo '{source}' holds {len(zoo)} data models")
            model = zoo.model(model_index)
            return LoadedModel(model, "transformers" if isinstance(model, transformers.PreTrainedModel) else "timm",
                               zoo)
        if "config.json" in names:
            return LoadedModel(_load_transformers(source), "transformers")
        raise FileNotFoundError(f"MODEL '{source}' is a folder without a model: expected a 🤗 model (config.json), a "
                                f"pruned checkpoint (pruned_config.json) or a data-model zoo (found {sorted(names)})")
    if os.path.exists(path):
        raise NotADirectoryError(f"MODEL '{source}' is a file; expected a timm name, a model folder or a Hub id")
    if looks_like_local_path(source, path):
        raise missing_local_path("MODEL", source)
    if timm.is_model(source):
        return LoadedModel(timm.create_model(source, pretrained=pretrained).eval(), "timm")
    return LoadedModel(_load_transformers(source), "transformers")


def _load_transformers(source: str) -> nn.Module:
    """A 🤗 model by the class its config names (``architectures``), else ``AutoModel``; safetensors only."""
    import transformers

    try:
        config = transformers.AutoConfig.from_pretrained(source)
    except OSError as e:
        raise FileNotFoundError(f"MODEL '{source}' is neither a timm model name, a local folder nor a reachable 🤗 "
                                f"Hub model ({e.__class__.__name__}: {str(e).splitlines()[0]})") from e
    name = (getattr(config, "architectures", None) or [None])[0]
    cls = getattr(transformers, name, None) if name else None
    if cls is None:  # a pruned class registered on import, or no head named in the config
        auto = transformers.AutoModelForImageClassification if hasattr(config, "image_size") \
            else transformers.AutoModelForSequenceClassification
        try:
            return auto.from_pretrained(source, use_safetensors=True).eval()
        except ValueError:
            cls = transformers.AutoModel
    return cls.from_pretrained(source, use_safetensors=True).eval()


def load_data(args: DataArguments, loaded: LoadedModel | None = None, model_source: str | None = None):
    """Task data for ``--dataset``: images or text by what the model takes (a text model's tokenizer is loaded from
    its folder when it has one). For a zoo model the data must match the zoo's recipe, so that the validation split
    is one the model never trained on."""
    from .data import load_image_classification, load_text_classification

    if args.dataset is None:
        return None
    limits = dict(max_train_samples=args.max_train_samples, max_test_samples=args.max_test_samples)
    config = getattr(loaded.model, "config", None) if loaded is not None else None
    if config is not None and not hasattr(config, "image_size") and hasattr(config, "vocab_size"):
        tokenizer = model_source if model_source and os.path.isfile(
            os.path.join(os.path.expanduser(model_source), "tokenizer_config.json")) else None
        data = load_text_classification(args.dataset, tokenizer=tokenizer, val_size=args.val_size, **limits)
    else:
        data = load_image_classification(args.dataset, val_size=args.val_size, **limits)
    if loaded is not None and loaded.zoo is not None:
        loaded.zoo.check_data(data)
    return data


def example_inputs(model: nn.Module, data=None, batch_size: int = 1) -> Any:
    """Inputs to trace the model with: from the data when given, else from the model's own config."""
    if data is not None:
        return data.example_inputs(batch_size)
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "image_size"):
        size = config.image_size if isinstance(config.image_size, int) else config.image_size[0]
        return torch.randn(batch_size, getattr(config, "num_channels", 3), size, size)
    if config is not None and hasattr(config, "vocab_size"):
        length = min(32, getattr(config, "max_position_embeddings", 32))
        generator = torch.Generator().manual_seed(0)
        return {"input_ids": torch.randint(0, config.vocab_size, (batch_size, length), generator=generator),
                "attention_mask": torch.ones(batch_size, length, dtype=torch.long)}
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if "input_size" in cfg:
        return torch.randn(batch_size, *cfg["input_size"])
    raise ValueError(f"cannot tell what inputs {type(model).__name__} takes; pass --dataset")


def load_metapruner(name_or_path: str | None, model: nn.Module):
    from .methods.metapruner import MetaPrunerModel
    from .methods.base import shipped_checkpoints
    from .pruning.serialization import architecture_of

    if name_or_path is None:
        architecture = architecture_of(model)
        shipped = {n: p for n, p in shipped_checkpoints(MetaPrunerModel).items()
                   if _card_field(p, "base_architecture") == architecture}
        if not shipped:
            raise ValueError(f"--metapruner: no shipped metanetwork for the architecture {architecture!r} (shipped: "
                             f"{sorted(shipped_checkpoints(MetaPrunerModel))}); pass a metanetwork folder or Hub id, "
                             "or train one with `hf-metaprune meta-train`")
        name_or_path = sorted(shipped)[0]
    return MetaPrunerModel.from_pretrained(name_or_path).eval()


def _card_field(folder: str, key: str) -> Any:
    with open(os.path.join(folder, "config.json")) as f:
        return json.load(f).get(key)


# ---- the subcommands ------------------------------------------------------------------------------------------------
def prune_command(argv: list[str]) -> dict:
    model_args, data_args, args = _parse((ModelArguments, DataArguments, PruneArguments), argv, "prune", "model")
    return _run_methods(model_args, data_args, args, [args.method], [args.speed_up], save=True)


def bench_command(argv: list[str]) -> dict:
    model_args, data_args, args = _parse((ModelArguments, DataArguments, BenchArguments), argv, "bench", "model")
    return _run_methods(model_args, data_args, args, args.methods, args.speed_ups, save=False)


def _run_methods(model_args: ModelArguments, data_args: DataArguments, args: PruneArguments, methods: list[str],
                 speed_ups: list[float], save: bool) -> dict:
    from .env import library_versions
    from .pruning import count_macs_and_params, measure_latency, prune_to_speedup, save_pruned
    from .training import evaluate_accuracy, pre_prune
    from .training.finetune import finetune

    unknown = [m for m in methods if m not in PRUNE_METHODS]
    if unknown:
        raise ValueError(f"--method(s) {unknown}: choose from {PRUNE_METHODS}")
    if any(not s > 1.0 for s in speed_ups):
        raise ValueError(f"--speed_up must be > 1 (a MACs speed-up), got {speed_ups}")
    if (args.finetune_epochs > 0 or args.pre_epochs > 0) and data_args.dataset is None:
        raise ValueError("--finetune_epochs / --pre_epochs need --dataset (the data to train on)")
    if save and os.path.isdir(args.output) and os.listdir(args.output):
        raise FileExistsError(f"--output '{args.output}' is not empty; choose a new folder (nothing is overwritten)")
    loaded = load_model(model_args.model, model_args.model_index, model_args.pretrained)
    model, kind = loaded.model, loaded.kind
    data = load_data(data_args, loaded, model_args.model)
    if data is not None and kind == "timm" and getattr(model, "num_classes", data.num_classes) != data.num_classes:
        raise ValueError(f"MODEL has {model.num_classes} classes but --dataset has {data.num_classes}")
    x = example_inputs(model, data)
    metapruner = load_metapruner(args.metapruner, model) if "metapruner" in methods else None
    train = dict(batch_size=args.batch_size, learning_rate=args.learning_rate, seed=args.seed, **_trainer_device(args))
    run_dir = args.output if save else os.path.join(args.output, "runs")

    def measure(name: str, m: nn.Module, seconds: float = 0.0) -> dict:
        macs, params = count_macs_and_params(m, x)
        row = {"model": name, "macs": macs, "params": params, "seconds": seconds}
        if data is not None:
            row["val_accuracy"] = evaluate_accuracy(m, data)
            if data.test is not None:
                row["test_accuracy"] = evaluate_accuracy(m, data, split="test")
        return row

    rows, models = [measure("original", model)], {"original": model}
    for method in methods:
        start = time.time()
        stage = pre_prune(model, data, os.path.join(run_dir, f"pre-{method}"), metapruner=metapruner
                          if method == "metapruner" else None, epochs=args.pre_epochs,
                          sparsity_lambda=args.sl_lambda if method == "depgraph-sl" else 0.0, **train) \
            if data is not None else None
        base = stage.model if stage is not None else (
            metapruner.transform(model, x) if method == "metapruner" else model)
        pre_seconds = time.time() - start
        for speed_up in speed_ups:
            start = time.time()
            result = prune_to_speedup(base, x, speed_up, importance="random" if method == "random" else "group_l2")
            name = f"{method} {speed_up:g}x"
            pruned = result.model
            row = measure(name, pruned)
            row["pruned_val_accuracy"] = row.get("val_accuracy")
            if data is not None and _has_batchnorm(pruned):
                row["recalibrated_val_accuracy"] = _recalibrated_accuracy(pruned, data, args.seed)
            if args.finetune_epochs > 0:
                pruned = finetune(pruned, data, os.path.join(run_dir, f"finetune-{method}-{speed_up:g}x"),
                                  epochs=args.finetune_epochs, **train).model
                row.update({k: v for k, v in measure(name, pruned).items() if k.endswith("accuracy")})
            row.update(method=method, target_speed_up=speed_up, speed_up=result.speed_up,
                       seconds=pre_seconds + time.time() - start)
            rows.append(row)
            models[name] = pruned
    latency = measure_latency({k: m.cpu() for k, m in models.items()}, _batch(x, args.latency_batch_size), runs=10,
                              channels_last=isinstance(x, torch.Tensor) and x.dim() == 4)
    for row in rows:
        row["latency_ms"] = latency[row["model"]] * 1e3
        row["latency_speed_up"] = latency["original"] / latency[row["model"]]
    summary = {"model": model_args.model, "dataset": data_args.dataset, "rows": rows,
               "arguments": {**asdict(model_args), **asdict(data_args), **asdict(args)},
               "versions": library_versions()}
    print(format_table(rows, args.latency_batch_size), flush=True)
    if save:
        final = models[rows[-1]["model"]].cpu().eval()
        if kind == "transformers":
            final.save_pretrained(args.output)
            tokenizer = getattr(data, "tokenizer", None)
            if tokenizer is not None:
                tokenizer.save_pretrained(args.output)
            how = f"transformers.{type(final).__name__}.from_pretrained('{args.output}') after `import hf_metaprune`"
        else:
            save_pruned(final, args.output)
            how = f"hf_metaprune.load_pruned('{args.output}')"
        print(f"\npruned model written to {args.output}; reload it with {how}", flush=True)
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, "prune_results.json" if save else "bench_results.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _recalibrated_accuracy(model: nn.Module, data: Any, seed: int) -> float:
    """Validation accuracy of a copy whose BatchNorm statistics are re-estimated on 2000 training images: no
    gradient step, but the statistics stored for the unpruned network no longer hide what the kept channels do."""
    from .pruning import recalibrate_batchnorm, recalibration_batches
    from .training import evaluate_accuracy

    model = copy.deepcopy(model)
    recalibrate_batchnorm(model, recalibration_batches(data, seed=seed))
    return evaluate_accuracy(model, data)


def _trainer_device(args: Any) -> dict[str, Any]:
    """TrainingArguments for the CLI's training stages: the CPU when no GPU is visible, bf16 autocast on request."""
    return dict(report_to="none", use_cpu=not torch.cuda.is_available(), bf16=bool(args.bf16))


def _batch(x: Any, batch_size: int) -> Any:
    if isinstance(x, torch.Tensor):
        return x[:1].expand(batch_size, *x.shape[1:]).contiguous()
    return {k: v[:1].expand(batch_size, *v.shape[1:]).contiguous() for k, v in x.items()}


def format_table(rows: list[dict], latency_batch_size: int) -> str:
    """Markdown: MACs, params, measured CPU latency and accuracy (when measured) of every model."""
    accuracy = [k for k in ("pruned_val_accuracy", "recalibrated_val_accuracy", "val_accuracy", "test_accuracy")
                if any(k in r for r in rows)]
    titles = {"pruned_val_accuracy": "val acc right after pruning", "recalibrated_val_accuracy": "+ BN recalibration",
              "val_accuracy": "val acc", "test_accuracy": "test acc"}
    lines = ["| model | MACs (M) | MACs speed-up | params (k) | CPU latency (ms, batch "
             f"{latency_batch_size}) | latency speed-up | " + " | ".join(titles[k] for k in accuracy) + " |",
             "|---" * (6 + len(accuracy)) + "|"]
    macs0 = rows[0]["macs"]
    for r in rows:
        cells = [f"{r[k]:.4f}" if r.get(k) is not None else "–" for k in accuracy]
        lines.append(f"| {r['model']} | {r['macs'] / 1e6:.2f} | {macs0 / r['macs']:.2f}x | {r['params'] / 1e3:.1f} | "
                     f"{r['latency_ms']:.2f} | {r['latency_speed_up']:.2f}x | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def evaluate_command(argv: list[str]) -> dict:
    from .env import library_versions
    from .pruning import count_macs_and_params, measure_latency
    from .training import evaluate_accuracy

    model_args, data_args = _parse((ModelArguments, DataArguments), argv, "evaluate", "model")
    if data_args.dataset is None:
        raise ValueError("evaluate needs --dataset (the data to measure accuracy on)")
    loaded = load_model(model_args.model, model_args.model_index, model_args.pretrained)
    model, data = loaded.model, load_data(data_args, loaded, model_args.model)
    x = data.example_inputs()
    macs, params = count_macs_and_params(model, x)
    row = {"model": model_args.model, "macs": macs, "params": params,
           "val_accuracy": evaluate_accuracy(model, data)}
    if data.test is not None:
        row["test_accuracy"] = evaluate_accuracy(model, data, split="test")
    latency = measure_latency({"m": model}, _batch(x, 64), runs=10)["m"]
    row.update(latency_ms=latency * 1e3, latency_speed_up=1.0)
    print(format_table([row], 64), flush=True)
    return {"rows": [row], "versions": library_versions()}


def zoo_command(argv: list[str]) -> dict:
    from .training import train_zoo

    args, data_args = _parse((ZooArguments, DataArguments), argv, "zoo", "architecture")
    data = load_data(data_args)
    if data is None:
        raise ValueError("zoo needs --dataset (the data the data models are trained on)")
    zoo = train_zoo(args.architecture, data, args.output_dir, num_models=args.num_models, epochs=args.epochs,
                    seed=args.seed, prune_speed_up=args.prune_speed_up, finetune_epochs=args.finetune_epochs,
                    finetune_learning_rate=args.finetune_learning_rate, batch_size=args.batch_size,
                    learning_rate=args.learning_rate, warmup_steps=args.warmup, **_trainer_device(args))
    accuracy = list(zoo.dataset["val_accuracy"])
    print(f"zoo of {len(zoo)} {args.architecture} data models in {os.path.join(args.output_dir, 'zoo')}; "
          f"validation accuracy {min(accuracy):.4f}-{max(accuracy):.4f}", flush=True)
    return {"path": os.path.join(args.output_dir, "zoo"), "val_accuracy": accuracy}


def meta_train_command(argv: list[str]) -> str:
    from .methods.metapruner import MetaPrunerTrainingArguments, meta_train
    from .training import DataModelZoo

    script, data_args, training = _parse((MetaTrainArguments, DataArguments, MetaPrunerTrainingArguments), argv,
                                         "meta-train")
    if script.zoo is None or data_args.dataset is None or training.output_dir is None:
        raise ValueError("meta-train needs --zoo, --dataset and --output_dir")
    zoo = DataModelZoo.load(script.zoo)
    data = load_data(DataArguments(data_args.dataset, data_args.val_size, data_args.max_train_samples, 1),
                     LoadedModel(zoo.model(0), "", zoo))
    eval_models = script.num_eval_models
    training.device  # sets up the distributed state (accelerate launch / torchrun) that process_index reads
    if training.process_index == 0:  # before training: what runs where
        print(f"[metanetwork] {zoo.require_architecture()}: {len(zoo) - eval_models} training / {eval_models} held-out "
              f"data models, {training.world_size} process(es)", flush=True)
    if eval_models == 0 and training.eval_strategy != "no":
        raise ValueError("--num_eval_models 0 leaves no data model to evaluate on; also pass --eval_strategy no")
    result = meta_train(zoo, data, training.output_dir, num_eval_models=eval_models, hidden_size=script.hidden_size,
                        num_layers=script.num_layers, residual_scale=script.residual_scale, seed=training.seed,
                        dataset=data_args.dataset, resume=_resume(training.resume_from_checkpoint), args=training)
    if training.process_index == 0:
        scores = result.model.config.validation_scores
        print(f"[metanetwork] saved to {result.path}" + (f"; validation scores {scores}" if scores else ""),
              flush=True)
    return result.path


def env_command(argv: list[str]) -> dict:
    from .env import library_versions
    from .methods import get_method
    from .methods.base import shipped_checkpoints
    from .methods.mapping import METHODS

    if argv and argv[0] in ("-h", "--help"):
        print("usage: hf-metaprune env\n\nPrint the library versions (paste them into bug reports) and the shipped "
              "metanetworks.")
        return {}
    versions = library_versions()
    versions["cuda available"] = str(torch.cuda.is_available())
    width = max(map(len, versions))
    for name, version in versions.items():
        print(f"{name:<{width}}  {version}")
    shipped = {m: sorted(shipped_checkpoints(get_method(m).model_class)) for m in sorted(METHODS)}
    print("\nshipped checkpoints (from_pretrained by name, offline): " +
          "; ".join(f"{m}: {', '.join(names) or '–'}" for m, names in shipped.items()))
    return {"versions": versions, "shipped": shipped}


COMMANDS = {"prune": prune_command, "evaluate": evaluate_command, "bench": bench_command, "zoo": zoo_command,
            "meta-train": meta_train_command, "env": env_command}
HELP = {"prune": "prune a model to a MACs speed-up (and finetune it); writes a reloadable folder",
        "evaluate": "accuracy, MACs, params and CPU latency of a model on a dataset",
        "bench": "several methods and speed-ups side by side, with the same budget",
        "zoo": "train a data-model zoo (resumable) to meta-train on",
        "meta-train": "meta-train a metanetwork on a zoo (MetaPrunerTrainer; accelerate launch works)",
        "env": "library versions and shipped checkpoints, for bug reports"}


def _resume(value: str | None) -> bool | str:
    """``--resume_from_checkpoint``: ``last`` / ``true`` continue from the newest checkpoint, a path from that one."""
    if value is None or str(value).lower() in ("", "none", "false", "no"):
        return False
    return True if str(value).lower() in ("last", "latest", "true", "yes", "auto") else value


def _parse(classes: tuple, argv: list[str], command: str, positional: str | None = None) -> tuple:
    """``HfArgumentParser`` over ``classes``; a first argument without dashes is ``--<positional>``."""
    argv = list(argv)
    if positional and argv and not argv[0].startswith("-"):
        argv = [f"--{positional}", argv[0], *argv[1:]]
    parser = HfArgumentParser(classes, prog=f"hf-metaprune {command}", description=HELP[command])
    return parser.parse_args_into_dataclasses(argv)


def main(argv: list[str] | None = None) -> int:
    """The console script: run one command; bad input gets one line naming what is wrong (exit code 1), not a
    traceback (set ``HF_METAPRUNE_TRACEBACK=1`` to see it)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        run(argv)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, NotADirectoryError) as e:
        if os.environ.get("HF_METAPRUNE_TRACEBACK"):
            raise
        print(f"hf-metaprune {argv[0]}: error: {e}", file=sys.stderr)
        return 1
    return 0


def run(argv: list[str]) -> Any:
    """Run the command ``argv`` names and return its result (a summary dict, or a path for ``meta-train``)."""
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: hf-metaprune COMMAND [ARGS] (hf-metaprune COMMAND --help)\n\ncommands:")
        for name, text in HELP.items():
            print(f"  {name:<11} {text}")
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nhf-metaprune: unknown command '{argv[0]}'", file=sys.stderr)
            sys.exit(2)
        return None
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
