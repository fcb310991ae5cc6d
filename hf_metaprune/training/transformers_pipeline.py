"""The whole method on a 🤗 transformers encoder, in one call (examples/prune_vit.py and examples/prune_bert.py):

1. train a small zoo of data models from one config (lightly head/neuron-pruned so widths vary) + one held out;
2. meta-train a graph metanetwork on the zoo (MetaPrunerTrainer, prune-and-probe on a held-out data model);
3. prune the held-out model to ``--speed_up`` MACs with and without the metanetwork (same finetuning budget),
   compare validation / test accuracy, MACs and CPU latency;
4. ``save_pretrained`` the pruned model (and tokenizer) and reload it with ``AutoModelFor...from_pretrained``.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field

import torch
from accelerate import PartialState
from transformers import HfArgumentParser

from ..env import library_versions
from ..methods.metapruner import meta_train
from ..pruning import measure_latency
from .finetune import evaluate_accuracy
from .pipeline import prune_and_finetune
from . import zoo as zoo_module


@dataclass
class PipelineArguments:
    output_dir: str = field(default="outputs/prune-transformer")
    dataset: str = field(default="", metadata={"help": "local parquet folder/file or Hub id"})
    max_train_samples: int = field(default=0, metadata={"help": "first N training rows (0: all)"})
    val_size: int = field(default=500, metadata={"help": "validation examples carved from the training rows"})
    max_test_samples: int = field(default=0)
    seed: int = field(default=0)
    # model
    hidden_size: int = field(default=64)
    num_hidden_layers: int = field(default=4)
    num_attention_heads: int = field(default=4)
    intermediate_size: int = field(default=128)
    # zoo
    num_zoo_models: int = field(default=3, metadata={"help": "data models to meta-train on (+1 pruned at the end)"})
    zoo_epochs: float = field(default=3.0)
    zoo_prune_speed_up: float = field(default=1.2, metadata={"help": "light pruning so widths vary (0: none)"})
    learning_rate: float = field(default=1e-3, metadata={"help": "AdamW, for every training stage"})
    batch_size: int = field(default=64)
    # meta-training
    max_steps: int = field(default=30)
    meta_hidden_size: int = field(default=16)
    meta_num_layers: int = field(default=2)
    residual_scale: float = field(default=0.05)
    meta_learning_rate: float = field(default=1e-3)
    sparsity_lambda: float = field(default=1e-3)
    task_batch_size: int = field(default=32)
    task_batches_per_step: int = field(default=2)
    # pruning and finetuning
    speed_up: float = field(default=2.0)
    transform_epochs: float = field(default=0.0, metadata={"help": "training after the transform (both methods)"})
    finetune_epochs: float = field(default=2.0)
    disable_tqdm: bool = field(default=True)


def run(args: PipelineArguments, data, config, auto_class, what: str) -> dict:
    """Run steps 1-4 for ``config`` on ``data``; write ``<output_dir>/results.json``."""
    cpu = not torch.cuda.is_available()
    state = PartialState(cpu=cpu)
    common = dict(report_to="none", disable_tqdm=args.disable_tqdm, use_cpu=cpu, logging_steps=20,
                  optim="adamw_torch", learning_rate=args.learning_rate, batch_size=args.batch_size)
    say = (lambda m: print(f"[{what} {time.strftime('%H:%M:%S')}] {m}", flush=True)) if state.is_main_process \
        else (lambda m: None)
    seconds, start = {}, time.time()

    t = time.time()
    zoo = zoo_module.train_zoo(config, data, args.output_dir, num_models=args.num_zoo_models + 1,
                               epochs=args.zoo_epochs, seed=args.seed, prune_speed_up=args.zoo_prune_speed_up or None,
                               finetune_epochs=args.zoo_epochs / 2, **common)
    models, held_out = zoo.split(1)
    seconds["zoo"] = time.time() - t
    say(f"zoo: validation accuracy {[round(a, 3) for a in zoo.dataset['val_accuracy']]} ({seconds['zoo']:.0f}s)")

    t = time.time()
    metapruner = meta_train(
        models, data, os.path.join(args.output_dir, "metanetwork_run"), eval_zoo=held_out,
        hidden_size=args.meta_hidden_size, num_layers=args.meta_num_layers, residual_scale=args.residual_scale,
        seed=args.seed, dataset=args.dataset, max_steps=args.max_steps, learning_rate=args.meta_learning_rate,
        sparsity_lambda=args.sparsity_lambda, sparsity_relative=False, prune_aware_weight=0.0,
        task_batch_size=args.task_batch_size, task_batches_per_step=args.task_batches_per_step,
        probe_speed_up=args.speed_up, probe_learning_rate=args.learning_rate, eval_strategy="steps",
        eval_steps=args.max_steps, save_strategy="no", logging_steps=5, disable_tqdm=args.disable_tqdm,
        use_cpu=cpu).model
    seconds["meta_training"] = time.time() - t
    say(f"metanetwork: {args.max_steps} steps, validation scores {metapruner.config.validation_scores} "
        f"({seconds['meta_training']:.0f}s)")

    model = held_out.model(0)
    rows, models = [], {"unpruned": model}
    for method, mp in (("head/neuron group-L2", None), ("metanetwork + group-L2", metapruner)):
        t = time.time()
        result = prune_and_finetune(model, data, args.speed_up, os.path.join(args.output_dir, f"prune-{len(rows)}"),
                                       metapruner=mp, transform_epochs=args.transform_epochs,
                                       finetune_epochs=args.finetune_epochs, seed=args.seed, **common)
        seconds[method] = time.time() - t
        models[method] = result.model
        rows.append({"method": method, "val_accuracy": result.val_accuracy, "speed_up": result.prune.speed_up,
                     "params": result.prune.params_after,
                     "heads": result.model.config.pruned_attention_heads, "stage_val_accuracy":
                     result.stage_val_accuracy})
        say(f"{method}: {result.prune}, heads per layer {list(rows[-1]['heads'].values())}, validation accuracy "
            f"{result.val_accuracy:.4f} ({seconds[method]:.0f}s)")
    summary = None
    if state.is_main_process:
        latency = measure_latency({k: m.cpu() for k, m in models.items()}, data.example_inputs(16),
                                             runs=10)
        base = {"method": "unpruned", "val_accuracy": evaluate_accuracy(model, data), "speed_up": 1.0,
                "params": sum(p.numel() for p in model.parameters())}
        for row in [base] + rows:
            row["test_accuracy"] = evaluate_accuracy(models[row["method"]], data, split="test")
            row["latency_ms"] = latency[row["method"]] * 1e3
        final = os.path.join(args.output_dir, "pruned")  # the metanetwork-pruned model, as any 🤗 model
        models["metanetwork + group-L2"].save_pretrained(final)
        if getattr(data, "tokenizer", None) is not None:
            data.tokenizer.save_pretrained(final)
        reloaded = auto_class.from_pretrained(final)
        seconds["total"] = time.time() - start
        summary = {"rows": [base] + rows, "seconds": seconds, "reloaded_from": final,
                   "reloaded_val_accuracy": evaluate_accuracy(reloaded, data), "arguments": asdict(args),
                   "versions": library_versions()}
        with open(os.path.join(args.output_dir, "results.json"), "w") as f:
            json.dump(summary, f, indent=2)
        print("\n| method | val acc | test acc | MACs speed-up | params | CPU latency (ms, batch 16) |\n"
              "|---|---|---|---|---|---|")
        for r in summary["rows"]:
            print(f"| {r['method']} | {r['val_accuracy']:.4f} | {r['test_accuracy']:.4f} | {r['speed_up']:.2f}x | "
                  f"{r['params'] / 1e3:.1f}k | {r['latency_ms']:.1f} |")
        print(f"\npruned model saved to {final} and reloaded with {auto_class.__name__}.from_pretrained "
              f"(validation accuracy {summary['reloaded_val_accuracy']:.4f}); total {seconds['total']:.0f}s",
              flush=True)
    state.wait_for_everyone()
    return summary


def parse(defaults: dict, argv: list[str] | None = None) -> PipelineArguments:
    parser = HfArgumentParser(PipelineArguments)
    parser.set_defaults(**defaults)
    (args,) = parser.parse_args_into_dataclasses(argv)
    return args
