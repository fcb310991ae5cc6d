"""STAMP end to end (set-based task-adaptive meta-pruning, Song et al. 2020): a backbone trained on reference classes,
STAMP meta-trained on tasks drawn from them, then an unseen target task pruned *before* training on it — from a
sample of its images — and finetuned, against a uniform width multiplier at the same MACs and budget.

    python examples/stamp.py --output_dir outputs/stamp-example --speed_up 2
    accelerate launch examples/stamp.py --output_dir outputs/stamp-example      # meta-training data-parallel
    # any class split of any image dataset (a local parquet folder or a Hub id):
    python examples/stamp.py --dataset uoft-cs/cifar10 --reference_classes 0 1 2 3 4 5 --target_classes 6 7 8 9

The defaults are sized for 2 CPU cores (~15 min: 20k training images, a 5-epoch backbone, 150 episodes, 2
finetuning epochs); benchmarks/stamp.py measures the method at full size against every baseline over seeds. The
backbone is saved with ``hm.save_pruned`` under ``<output_dir>/backbone``, STAMP with ``save_pretrained`` to
``<output_dir>/stamp``, the pruned target network to ``<output_dir>/pruned``, the numbers to
``<output_dir>/results.json``. The test split is read once, for the final table.
"""
from __future__ import annotations

import copy
import json
import os
from dataclasses import asdict, dataclass, field

import torch
from accelerate import PartialState
from transformers import HfArgumentParser, TrainingArguments, set_seed

import hf_metaprune as hm
from hf_metaprune.methods.stamp import attach_head
from hf_metaprune.training import evaluate_accuracy


@dataclass
class STAMPArguments:
    output_dir: str = field(default="outputs/stamp-example")
    dataset: str = field(default="../shared/data/cifar10", metadata={"help": "parquet folder or Hub dataset id"})
    reference_classes: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4, 5])
    target_classes: list[int] = field(default_factory=lambda: [6, 7, 8, 9])
    architecture: str = field(default="cifar_resnet20")
    max_train_samples: int = field(default=20000, metadata={"help": "first N training rows (0: all)"})
    val_size: int = field(default=2000)
    base_epochs: float = field(default=5.0, metadata={"help": "backbone training on the reference classes"})
    episodes: int = field(default=150, metadata={"help": "STAMP meta-training episodes"})
    meta_learning_rate: float = field(default=1e-3)
    set_size: int = field(default=200)
    speed_up: float = field(default=2.0, metadata={"help": "target MACs speed-up"})
    finetune_epochs: float = field(default=2.0)
    finetune_learning_rate: float = field(default=0.05)
    seed: int = field(default=0)
    disable_tqdm: bool = field(default=False)


def main(argv: list[str] | None = None) -> dict | None:
    (args,) = HfArgumentParser(STAMPArguments).parse_args_into_dataclasses(argv)
    if set(args.reference_classes) & set(args.target_classes):
        raise ValueError("--reference_classes and --target_classes must be disjoint (the target task is unseen)")
    cpu = not torch.cuda.is_available()
    state = PartialState(cpu=cpu)
    set_seed(args.seed)
    data = hm.load_image_classification(args.dataset, val_size=args.val_size, seed=args.seed,
                                        max_train_samples=args.max_train_samples or None)
    reference, target = data.select_classes(args.reference_classes), data.select_classes(args.target_classes)
    common = dict(report_to="none", disable_tqdm=args.disable_tqdm, use_cpu=cpu)

    # 1. the backbone, trained on the reference classes only
    backbone = hm.train_zoo(args.architecture, reference, os.path.join(args.output_dir, "backbone"), num_models=1,
                            epochs=args.base_epochs, seed=args.seed, learning_rate=0.1, **common).model(0)

    # 2. STAMP meta-trained on tasks of the reference classes (the backbone stays frozen)
    stamp = hm.STAMPModel.from_network(backbone, set_size=args.set_size, dataset=args.dataset)
    trainer = hm.STAMPTrainer(stamp, TrainingArguments(
        output_dir=os.path.join(args.output_dir, "stamp_run"), max_steps=args.episodes,
        learning_rate=args.meta_learning_rate, lr_scheduler_type="cosine", warmup_steps=0.05, max_grad_norm=1.0,
        logging_steps=10, save_strategy="no", seed=args.seed, **common), reference, num_episodes=args.episodes)
    trainer.train()
    episode_loss = trainer.evaluate()["eval_loss"]  # every process: evaluation gathers across them
    stamp = trainer.accelerator.unwrap_model(trainer.model).eval()
    if state.is_main_process:
        stamp.config.validation_scores = {"episode_loss": round(episode_loss, 4)}
        stamp.save_pretrained(os.path.join(args.output_dir, "stamp"))

    # 3. the unseen task: STAMP's masks from a sample of its images vs a uniform width multiplier, same budget
    inputs = target.example_inputs()
    uniform = copy.deepcopy(backbone).requires_grad_(True)
    attach_head(uniform, target.num_classes)
    widths = hm.ChannelGroups.from_model(uniform, inputs).uniform_widths(args.speed_up)
    candidates = {"STAMP": stamp.prune(backbone, target, args.speed_up, seed=args.seed).model,
                  "uniform width": hm.prune_to_widths(uniform, inputs, widths, keep="group_l2").model}
    macs0, _ = hm.count_macs_and_params(backbone, inputs)
    rows = []
    for i, (name, model) in enumerate(candidates.items()):
        result = hm.finetune(model, target, os.path.join(args.output_dir, f"finetune-{i}"),
                             epochs=args.finetune_epochs, learning_rate=args.finetune_learning_rate, seed=args.seed,
                             **common)
        macs, params = hm.count_macs_and_params(result.model, inputs)
        rows.append({"method": name, "speed_up": macs0 / macs, "params": params, "val_accuracy": result.val_accuracy,
                     "model": result.model})
    summary = None
    if state.is_main_process:
        hm.save_pruned(rows[0]["model"], os.path.join(args.output_dir, "pruned"), architecture=args.architecture)
        for r in rows:
            r["test_accuracy"] = evaluate_accuracy(r.pop("model"), target, split="test")
        table = "\n".join(["| masks | MACs speed-up | params | val acc | test acc |", "|---|---|---|---|---|"] +
                          [f"| {r['method']} | {r['speed_up']:.2f}x | {r['params'] / 1e3:.1f}k | "
                           f"{r['val_accuracy']:.4f} | {r['test_accuracy']:.4f} |" for r in rows])
        summary = {"table": table, "rows": rows, "arguments": asdict(args), "versions": hm.library_versions()}
        with open(os.path.join(args.output_dir, "results.json"), "w") as f:
            json.dump(summary, f, indent=2)
        print(f"\n{table}\n\nwritten to {os.path.join(args.output_dir, 'results.json')}", flush=True)
    state.wait_for_everyone()
    return summary


if __name__ == "__main__":
    main()
