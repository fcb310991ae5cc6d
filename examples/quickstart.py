"""Quickstart: the whole method end to end on CIFAR-10 in under ten minutes on two CPU cores.

    python examples/quickstart.py --output_dir outputs/quickstart
    accelerate launch examples/quickstart.py --output_dir outputs/quickstart     # training stages data-parallel
    # two CPU processes without a GPU: accelerate launch --multi_gpu --num_processes 2 examples/quickstart.py ...

1. train a tiny data-model zoo of CIFAR ResNet-20s (plus one more, held out, trained the same way);
2. meta-train a small graph metanetwork on the zoo with the ``MetaPrunerTrainer``;
3. prune the held-out network to 2x fewer MACs with and without the metanetwork (``prune_and_finetune``, the same
   finetuning budget for both) and compare validation / test accuracy, MACs, parameters and measured CPU latency.

The table is printed as Markdown and written with all numbers to ``<output_dir>/quickstart.json``. The defaults
are sized for a demo (10,000 training images, 5 epochs per data model, 40 meta-training steps, 3 finetuning
epochs; about 8 minutes on 2 idle cores): accuracies are far below a full run; scale up
``--max_train_samples``, ``--zoo_epochs``, ``--num_zoo_models``, ``--max_steps`` and ``--finetune_epochs`` for real
numbers, or use examples/train_zoo.py, train_metanetwork.py and prune_and_finetune.py. Rerunning with the same
``--output_dir`` reuses the zoo already trained there. The test split is read only for the final table.
"""
from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import asdict, dataclass, field

import torch
from accelerate import PartialState
from transformers import HfArgumentParser, set_seed

warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated")  # torch_geometric, at import

import hf_metaprune as hm  # noqa: E402
from hf_metaprune.training import evaluate_accuracy  # noqa: E402


@dataclass
class QuickstartArguments:
    output_dir: str = field(default="outputs/quickstart", metadata={"help": "zoo, metanetwork, quickstart.json"})
    dataset: str = field(default="../shared/data/cifar10",
                         metadata={"help": "local folder of parquet files or a Hub dataset id"})
    architecture: str = field(default="cifar_resnet20")
    max_train_samples: int = field(default=11000, metadata={"help": "first N training rows (0: all 50,000)"})
    val_size: int = field(default=1000, metadata={"help": "validation images carved from those rows"})
    max_test_samples: int = field(default=0, metadata={"help": "first N test rows (0: all 10,000)"})
    seed: int = field(default=0)
    disable_tqdm: bool = field(default=True, metadata={"help": "no progress bars (--disable_tqdm false: show them)"})
    # the zoo
    num_zoo_models: int = field(default=3, metadata={"help": "data models to meta-train on (+1 held out)"})
    zoo_epochs: float = field(default=5.0, metadata={"help": "training epochs per data model"})
    zoo_learning_rate: float = field(default=0.1)
    batch_size: int = field(default=128)
    # meta-training (defaults as in examples/train_metanetwork.py)
    max_steps: int = field(default=40, metadata={"help": "meta-training steps"})
    hidden_size: int = field(default=16)
    num_layers: int = field(default=2)
    residual_scale: float = field(default=0.1)
    learning_rate: float = field(default=1e-3)
    sparsity_lambda: float = field(default=3e-3)
    warmup_steps: int = field(default=0)
    optim: str = field(default="adamw_torch")
    weight_decay: float = field(default=0.0)
    lr_scheduler_type: str = field(default="constant")
    task_batch_size: int = field(default=64)
    task_batches_per_step: int = field(default=2)
    data_models_per_step: int = field(default=1, metadata={"help": "per-device batch of data models"})
    # pruning, finetuning, timing
    speed_up: float = field(default=2.0, metadata={"help": "target MACs speed-up"})
    finetune_epochs: float = field(default=3.0, metadata={"help": "finetuning epochs after pruning (both methods)"})
    finetune_learning_rate: float = field(default=0.01)
    latency_batch_size: int = field(default=64)
    latency_runs: int = field(default=15, metadata={"help": "timed forwards per model (median reported)"})


def log(state: PartialState, message: str) -> None:
    if state.is_main_process:
        print(f"[quickstart {time.strftime('%H:%M:%S')}] {message}", flush=True)


def train_metanetwork(args: QuickstartArguments, zoo: hm.DataModelZoo, data, device_is_cpu: bool):
    """Meta-train a small metanetwork on ``zoo`` (no evaluation during training: the comparison below is it)."""
    set_seed(args.seed)
    graph = hm.model_to_graph(zoo.model(0), data.example_inputs())
    config = hm.MetaPrunerConfig.for_graphs([graph], hidden_size=args.hidden_size, num_layers=args.num_layers,
                                            residual_scale=args.residual_scale, dataset=args.dataset)
    training_args = hm.MetaPrunerTrainingArguments(
        output_dir=os.path.join(args.output_dir, "metanetwork_run"), max_steps=args.max_steps,
        per_device_train_batch_size=args.data_models_per_step, learning_rate=args.learning_rate,
        sparsity_lambda=args.sparsity_lambda, warmup_steps=args.warmup_steps, optim=args.optim,
        weight_decay=args.weight_decay, lr_scheduler_type=args.lr_scheduler_type,
        task_batch_size=args.task_batch_size, task_batches_per_step=args.task_batches_per_step,
        probe_speed_up=args.speed_up, eval_strategy="no", save_strategy="no", logging_steps=5, seed=args.seed,
        dataloader_drop_last=True,  # same data models per step whatever the number of processes
        report_to="none", disable_tqdm=args.disable_tqdm, use_cpu=device_is_cpu)
    trainer = hm.MetaPrunerTrainer(hm.MetaPrunerModel(config), training_args, zoo, data)
    trainer.train()
    final = os.path.join(args.output_dir, "metanetwork")
    trainer.save_model(final)  # model.safetensors + config.json + README.md model card
    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero() and os.path.isfile(os.path.join(final, "training_args.bin")):
        os.remove(os.path.join(final, "training_args.bin"))  # pickled TrainingArguments: not part of the model
    return trainer.accelerator.unwrap_model(trainer.model).eval(), final


def markdown_table(rows: list[dict]) -> str:
    lines = ["| method | val accuracy | test accuracy | MACs | params | CPU latency (ms, batch {}) |".format(
        rows[0]["latency_batch_size"]), "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['val_accuracy']:.4f} | {r['test_accuracy']:.4f} | "
                     f"{r['macs'] / 1e6:.2f}M ({r['speed_up']:.2f}x) | {r['params'] / 1e3:.1f}k | "
                     f"{r['latency_s'] * 1e3:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    (args,) = HfArgumentParser(QuickstartArguments).parse_args_into_dataclasses(argv)
    cpu = not torch.cuda.is_available()
    state = PartialState(cpu=cpu)
    start = time.time()
    stage_seconds: dict[str, float] = {}
    common = dict(report_to="none", disable_tqdm=args.disable_tqdm, use_cpu=cpu, logging_steps=50)

    data = hm.load_image_classification(args.dataset, val_size=args.val_size, seed=args.seed,
                                        max_train_samples=args.max_train_samples or None,
                                        max_test_samples=args.max_test_samples or None)
    x = data.example_inputs()
    log(state, f"{args.dataset}: {len(data.train)} train / {len(data.validation)} validation / "
               f"{len(data.test)} test images")

    # 1. the zoo: num_zoo_models data models for meta-training + 1 held out, all trained the same way
    t = time.time()
    zoo = hm.train_zoo(args.architecture, data, args.output_dir, num_models=args.num_zoo_models + 1,
                       epochs=args.zoo_epochs, seed=args.seed, batch_size=args.batch_size,
                       learning_rate=args.zoo_learning_rate, **common)
    train_zoo, held_out = zoo.split(1)
    stage_seconds["zoo"] = time.time() - t
    log(state, f"zoo: {len(train_zoo)} data models + 1 held out, validation accuracy "
               f"{', '.join(f'{a:.3f}' for a in zoo.dataset['val_accuracy'])} ({stage_seconds['zoo']:.0f}s)")

    # 2. meta-training
    t = time.time()
    metapruner, metapruner_dir = train_metanetwork(args, train_zoo, data, cpu)
    stage_seconds["meta_training"] = time.time() - t
    log(state, f"metanetwork: {args.max_steps} steps, saved to {metapruner_dir} "
               f"({stage_seconds['meta_training']:.0f}s)")

    # 3. prune the held-out network with and without the metanetwork, same finetuning budget
    model = held_out.model(0)
    results = {}
    for method, mp in (("DepGraph (group-L2)", None), ("MetaPruner (metanetwork + group-L2)", metapruner)):
        t = time.time()
        tag = "metapruner" if mp is not None else "depgraph"
        results[method] = hm.prune_and_finetune(
            model, data, args.speed_up, os.path.join(args.output_dir, f"prune_{tag}"), metapruner=mp,
            finetune_epochs=args.finetune_epochs, batch_size=args.batch_size,
            learning_rate=args.finetune_learning_rate, seed=args.seed, **common)
        stage_seconds[f"prune_and_finetune_{tag}"] = time.time() - t
        log(state, f"{method}: {results[method].prune}, validation accuracy {results[method].val_accuracy:.4f} "
                   f"({stage_seconds[f'prune_and_finetune_{tag}']:.0f}s)")

    # 4. final numbers: test accuracy (the only use of the test split) and interleaved latency
    t = time.time()
    macs0, params0 = hm.count_macs_and_params(model, x)
    models = {"unpruned": model, **{m: r.model for m, r in results.items()}}
    rows = [{"method": "unpruned", "val_accuracy": evaluate_accuracy(model, data), "macs": macs0, "params": params0,
             "speed_up": 1.0}]
    for method, r in results.items():
        rows.append({"method": method, "val_accuracy": r.val_accuracy, "macs": r.prune.macs_after,
                     "params": r.prune.params_after, "speed_up": r.prune.speed_up,
                     "stage_val_accuracy": r.stage_val_accuracy, "stage_seconds": r.stage_seconds})
    summary = None
    if state.is_main_process:  # timing with all processes running would measure contention
        for row in rows:
            row["test_accuracy"] = evaluate_accuracy(models[row["method"]], data, split="test")
        latency = hm.pruning.measure_latency(models, data.example_inputs(args.latency_batch_size),
                                             runs=args.latency_runs, channels_last=True)
        for row in rows:
            row.update(latency_s=latency[row["method"]], latency_batch_size=args.latency_batch_size)
        stage_seconds["final_evaluation"] = time.time() - t
        stage_seconds["total"] = time.time() - start
        table = markdown_table(rows)
        summary = {"table": table, "rows": rows, "stage_seconds": stage_seconds, "metanetwork": metapruner_dir,
                   "torch_threads": torch.get_num_threads(), "arguments": asdict(args),
                   "versions": hm.library_versions()}
        with open(os.path.join(args.output_dir, "quickstart.json"), "w") as f:
            json.dump(summary, f, indent=2)
        print(f"\nHeld-out {args.architecture} pruned to {args.speed_up}x MACs, {args.finetune_epochs} finetuning "
              f"epochs each ({len(data.train)} training images); latency: median of {args.latency_runs} "
              f"channels_last CPU forwards, {torch.get_num_threads()} threads\n\n{table}\n")
        print(f"total {stage_seconds['total']:.0f}s (" + ", ".join(f"{k} {v:.0f}s" for k, v in stage_seconds.items()
                                                         if k != "total") + ")")
        print(f"written to {os.path.join(args.output_dir, 'quickstart.json')}", flush=True)
    state.wait_for_everyone()
    return summary


if __name__ == "__main__":
    main()
