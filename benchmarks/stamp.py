"""STAMP on an unseen task, measured: a CIFAR ResNet backbone trained on reference classes (CIFAR-10 0–5), STAMP
meta-trained on tasks drawn from those classes, then the unseen target task (classes 6–9, a 4-way task) pruned at
each MACs target *before* training on it, by STAMP and by the baselines — a uniform width multiplier (each group's
strongest channels), random masks, group-L2 pruning of the reference backbone (DepGraph's criterion) — and the
unpruned backbone; every network gets a fresh head and the same finetuning budget on the target. Reports test
accuracy, MACs, parameters, finetuning wall time and the wall time to reach a given validation accuracy (STAMP's
claim is cheaper training), mean ± std over seeds. Selection never looks at the test split.

    python benchmarks/stamp.py                       # writes results/stamp.{json,md}; stages cached under outputs/stamp

Resumable: the backbone, the meta-trained STAMP model and every finetuning run are saved as they finish.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import time
import warnings

import torch
from transformers import TrainingArguments

import hf_metaprune as hm
from hf_metaprune._io import atomic_update, write_json
from hf_metaprune.methods.stamp import attach_head
from hf_metaprune.training import evaluate_accuracy

warnings.filterwarnings("ignore", message=".*(unwrapped|jit.script).*")
# stamp-untrained: the same masks from a generator that was never meta-trained (its initial ranking, the backbone's
# group-L2 z-scores): what meta-training adds
METHODS = ("stamp", "stamp-untrained", "uniform", "random", "group-l2", "full")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", default="../shared/data/cifar10", help="local folder / parquet or Hub id")
    p.add_argument("--reference_classes", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    p.add_argument("--target_classes", type=int, nargs="+", default=[6, 7, 8, 9])
    p.add_argument("--architecture", default="cifar_resnet20")
    p.add_argument("--val_size", type=int, default=5000, help="validation images carved from the training split")
    p.add_argument("--max_train_samples", type=int, default=None)
    p.add_argument("--max_test_samples", type=int, default=None)
    p.add_argument("--base_epochs", type=float, default=15.0, help="backbone training on the reference classes")
    p.add_argument("--base_learning_rate", type=float, default=0.2)
    p.add_argument("--episodes", type=int, default=400, help="STAMP meta-training episodes")
    p.add_argument("--meta_learning_rate", type=float, default=1e-3)
    p.add_argument("--set_size", type=int, default=200, help="images of a task the set encoder reads")
    p.add_argument("--query_size", type=int, default=100)
    p.add_argument("--budget", choices=("macs", "kl"), default="macs")
    p.add_argument("--budget_weight", type=float, default=5.0)
    p.add_argument("--speed_ups", type=float, nargs="+", default=[2.0, 3.0])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--num_seeds", type=int, default=3)
    p.add_argument("--first_seed", type=int, default=0, help="run seeds first_seed..num_seeds-1 (split a run over "
                   "processes; the table reads every cached seed)")
    p.add_argument("--finetune_epochs", type=float, default=3.0, help="the same for every method")
    p.add_argument("--finetune_learning_rate", type=float, default=0.05)
    p.add_argument("--evals_per_epoch", type=int, default=4, help="validation points of the finetuning curve")
    p.add_argument("--reach", type=float, default=0.95, help="time to reach this fraction of the unpruned "
                   "backbone's final validation accuracy")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--output_dir", default="outputs/stamp")
    p.add_argument("--results_dir", default="results")
    p.add_argument("--disable_tqdm", action="store_true")
    args = p.parse_args(argv)
    if set(args.reference_classes) & set(args.target_classes):
        p.error("--reference_classes and --target_classes must be disjoint (the target task is unseen)")
    return args


def log(message: str) -> None:
    print(f"[stamp {time.strftime('%H:%M:%S')}] {message}", flush=True)


def pruned_for_task(method: str, stamp: hm.STAMPModel, backbone: torch.nn.Module,
                    target: hm.data.ImageClassificationData, speed_up: float,
                    seed: int) -> hm.PruneResult | torch.nn.Module:
    """The backbone for the target task (a fresh head) pruned by ``method`` at ``speed_up``."""
    if method == "stamp":
        return stamp.prune(backbone, target, speed_up, seed=seed)
    if method == "stamp-untrained":
        torch.manual_seed(seed)
        untrained = hm.STAMPModel(stamp.config).eval()  # the trained model's config, fresh generators
        untrained.network.load_state_dict(stamp.network.state_dict())
        if untrained.config.init_from_norms:
            untrained.init_from_norms()
        return untrained.prune(backbone, target, speed_up, seed=seed)
    model = copy.deepcopy(backbone).train().requires_grad_(True)
    attach_head(model, target.num_classes)
    inputs = target.example_inputs()
    if method == "full":
        return model
    if method == "group-l2":
        return hm.prune_to_speedup(model, inputs, speed_up, importance="group_l2")
    groups = hm.ChannelGroups.from_model(model, inputs)
    if method == "uniform":
        return hm.prune_to_widths(model, inputs, groups.uniform_widths(speed_up), keep="group_l2")
    scores = torch.rand(groups.num_units, generator=torch.Generator().manual_seed(seed))  # random masks
    return hm.prune_units(model, inputs, stamp.removed_for_speedup(scores, speed_up))


def _cached(args: argparse.Namespace, seed: int) -> list[tuple[str, str]]:
    root = os.path.join(args.output_dir, "runs", f"seed-{seed}")
    return [(root, f"{m}-{s:g}x") for m in args.methods for s in ([1.0] if m == "full" else args.speed_ups)
            if os.path.isfile(os.path.join(root, f"{m}-{s:g}x", "record.json"))]


def add_seconds(output_dir: str, seconds: dict[str, float]) -> dict[str, float]:
    """Accumulate each stage's wall time over resumed runs (a cached stage adds ~0), in output_dir."""
    path = os.path.join(output_dir, "stage_seconds.json")
    total = json.load(open(path)) if os.path.isfile(path) else {}
    total = {k: total.get(k, 0.0) + seconds.get(k, 0.0) for k in {*total, *seconds}}
    write_json(path, total)
    return total


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.manual_seed(0)
    data = hm.load_image_classification(args.dataset, val_size=args.val_size, max_train_samples=args.max_train_samples,
                                        max_test_samples=args.max_test_samples)
    reference, target = data.select_classes(args.reference_classes), data.select_classes(args.target_classes)
    log(f"reference classes {args.reference_classes}: {len(reference.train)} train / {len(reference.validation)} "
        f"val; target {args.target_classes}: {len(target.train)} / {len(target.validation)} / "
        f"{len(target.test) if target.test is not None else 0} test")
    training = dict(bf16=args.bf16, disable_tqdm=args.disable_tqdm, logging_steps=50,
                    use_cpu=not torch.cuda.is_available())

    # 1. the reference backbone (resumable: train_zoo saves after every model and resumes inside one)
    t = time.time()
    backbone = hm.train_zoo(args.architecture, reference, os.path.join(args.output_dir, "backbone"), num_models=1,
                            epochs=args.base_epochs, seed=0, batch_size=128, learning_rate=args.base_learning_rate,
                            warmup_steps=0.15, **training).model(0)
    backbone_seconds = time.time() - t
    backbone_val = evaluate_accuracy(backbone, reference)
    log(f"backbone: reference validation accuracy {backbone_val:.4f}")

    # 2. STAMP meta-trained on tasks of the reference classes
    folder = os.path.join(args.output_dir, "stamp")
    t = time.time()
    if os.path.isfile(os.path.join(folder, "model.safetensors")):
        stamp = hm.STAMPModel.from_pretrained(folder)
    else:
        stamp = hm.STAMPModel.from_network(backbone, set_size=args.set_size, budget=args.budget,
                                           budget_weight=args.budget_weight, dataset=args.dataset)
        meta_args = TrainingArguments(
            output_dir=os.path.join(args.output_dir, "stamp-run"), max_steps=args.episodes,
            learning_rate=args.meta_learning_rate, lr_scheduler_type="cosine", warmup_steps=0.05, max_grad_norm=1.0,
            logging_steps=20, eval_strategy="no", save_strategy="no", report_to="none", seed=0,
            disable_tqdm=args.disable_tqdm, use_cpu=training["use_cpu"])
        trainer = hm.STAMPTrainer(stamp, meta_args, reference, num_episodes=args.episodes,
                                  query_size=args.query_size)
        trainer.train()
        stamp.config.validation_scores = {"episode_loss": round(trainer.evaluate()["eval_loss"], 4)}
        stamp.save_pretrained(folder)
    stamp.eval()
    meta_seconds = time.time() - t
    log(f"STAMP meta-trained ({meta_seconds:.0f} s): {stamp.config.validation_scores}")

    # 3. every method on the target task, the same finetuning budget
    runs = []
    for seed in range(args.num_seeds):
        if seed < args.first_seed:  # another process runs these: read what it has cached
            runs += [json.load(open(os.path.join(root, name, "record.json"))) for root, name in _cached(args, seed)]
            continue
        for method in args.methods:
            for speed_up in ([1.0] if method == "full" else args.speed_ups):
                name = f"seed-{seed}/{method}-{speed_up:g}x"
                path = os.path.join(args.output_dir, "runs", name, "record.json")
                if os.path.isfile(path):
                    runs.append(json.load(open(path)))
                    continue
                t = time.time()
                result = pruned_for_task(method, stamp, backbone, target, speed_up, seed)
                prune_seconds = time.time() - t
                model = result.model if isinstance(result, hm.PruneResult) else result
                macs, params = hm.count_macs_and_params(model, target.example_inputs())
                t = time.time()
                every = max(1, math.ceil(len(target.train) / 128 / args.evals_per_epoch))
                tuned = hm.finetune(model, target, os.path.join(args.output_dir, "runs", name, "finetune"),
                                    epochs=args.finetune_epochs, learning_rate=args.finetune_learning_rate, seed=seed,
                                    resume=True, eval_strategy="steps", save_strategy="steps", eval_steps=every,
                                    save_steps=every, **training)
                finetune_seconds = time.time() - t
                curve = [h["eval_accuracy"] for h in tuned.log_history if "eval_accuracy" in h]
                runtime = next((h["train_runtime"] for h in tuned.log_history if "train_runtime" in h),
                               finetune_seconds)
                record = {"method": method, "seed": seed, "target_speed_up": speed_up, "macs": macs,
                          "params": params, "prune_seconds": prune_seconds, "finetune_seconds": runtime,
                          "val_curve": curve, "val_accuracy": tuned.val_accuracy,
                          "test_accuracy": evaluate_accuracy(tuned.model, target, split="test")}
                write_json(path, record)
                runs.append(record)
                log(f"{name}: {macs / 1e6:.2f}M MACs, val {tuned.val_accuracy:.4f}, test "
                    f"{record['test_accuracy']:.4f}, finetune {runtime:.0f} s")

    # 4. the table: mean ± std over seeds; time to reach args.reach x the unpruned backbone's final val accuracy
    full = [r for r in runs if r["method"] == "full"]
    threshold = args.reach * statistics.mean(r["val_curve"][-1] for r in full) if full else None

    def time_to_reach(r: dict) -> float | None:
        if threshold is None:
            return None
        for i, acc in enumerate(r["val_curve"]):
            if acc >= threshold:  # evaluations are evenly spaced: the runtime's share up to that one
                return r["finetune_seconds"] * (i + 1) / len(r["val_curve"])
        return None

    def mean_std(values: list[float], scale: float = 1.0) -> str:
        values = [v * scale for v in values]
        if not values:
            return "–"
        return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 else \
            f"{values[0]:.2f}"

    reach_column = f"time to {threshold * 100:.1f} % val (s)" if threshold else "time to reach (no full row)"
    rows, lines = [], [f"| method | target | MACs (M) | params (M) | test acc (%) | finetune (s) | {reach_column} | "
                       "reached |",
                       "|---|---|---|---|---|---|---|---|"]
    for method in args.methods:
        for speed_up in ([1.0] if method == "full" else args.speed_ups):
            group = [r for r in runs if r["method"] == method and r["target_speed_up"] == speed_up]
            reach = [time_to_reach(r) for r in group]
            hit = [x for x in reach if x is not None]
            row = {"method": method, "target_speed_up": speed_up, "seeds": len(group),
                   "test_accuracy": [r["test_accuracy"] for r in group], "macs": [r["macs"] for r in group],
                   "params": [r["params"] for r in group], "finetune_seconds": [r["finetune_seconds"] for r in group],
                   "seconds_to_reach": reach}
            rows.append(row)
            lines.append(f"| {method} | {'–' if method == 'full' else f'{speed_up:g}x'} | "
                         f"{mean_std(row['macs'], 1e-6)} | {mean_std(row['params'], 1e-6)} | "
                         f"{mean_std(row['test_accuracy'], 100)} | {mean_std(row['finetune_seconds'])} | "
                         f"{mean_std(hit)} | {len(hit)}/{len(group)} |")
    table = "\n".join(lines)
    stages = add_seconds(args.output_dir, {"backbone": backbone_seconds, "meta_training": meta_seconds})
    summary = {"arguments": vars(args), "versions": hm.library_versions(), "backbone_val_accuracy": backbone_val,
               "stage_seconds": stages,
               "reach_threshold": threshold, "table": table, "rows": rows, "runs": runs}
    os.makedirs(args.results_dir, exist_ok=True)
    write_json(os.path.join(args.results_dir, "stamp.json"), summary)
    with atomic_update(args.results_dir) as tmp:
        with open(os.path.join(tmp, "stamp.md"), "w") as f:
            f.write(f"# STAMP on an unseen task\n\nReference classes {args.reference_classes} (backbone "
                    f"{args.architecture}, validation accuracy {backbone_val:.4f}); target classes "
                    f"{args.target_classes}; {args.num_seeds} seeds, {args.finetune_epochs:g} finetuning epochs for "
                    f"every method.\n\n{table}\n")
    print(table)
    return summary


if __name__ == "__main__":
    main()
