"""Prune a trained network to a MACs speed-up and finetune it: with a metanetwork, or the DepGraph baseline.

    # with a metanetwork from examples/train_metanetwork.py, on data model 7 of a zoo:
    python examples/prune_and_finetune.py --model outputs/zoo-resnet20 --zoo_index 7 \\
        --metapruner outputs/metapruner-resnet20/final --speed_up 2 --finetune_epochs 10 --distill \\
        --output_dir outputs/pruned-mp
    # DepGraph baseline (no --metapruner; --sparsity_lambda > 0 adds sparse learning before pruning):
    python examples/prune_and_finetune.py --model outputs/zoo-resnet20 --zoo_index 7 --speed_up 2 \\
        --transform_epochs 5 --sparsity_lambda 5e-4 --finetune_epochs 10 --output_dir outputs/pruned-depgraph
    accelerate launch examples/prune_and_finetune.py ...        # finetuning stages run data-parallel

``--model`` is a zoo (examples/train_zoo.py output, pick a row with ``--zoo_index``) or a folder written by
``hm.save_pruned``. Both methods get the same budget: ``--transform_epochs`` of training before pruning and
``--finetune_epochs`` after. The pruned network is saved with ``hm.save_pruned`` to ``<output_dir>/pruned``
(model.safetensors + pruned_config.json; reload with ``hm.load_pruned``) and the numbers to
``<output_dir>/results.json``. Accuracies are on the validation split carved from the training data (pass the
same ``--dataset`` / ``--max_train_samples`` / ``--val_size`` as to train_zoo.py, so the data model never trained on
it); pass ``--eval_test`` to also report the test split.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

import torch
from accelerate import PartialState
from transformers import HfArgumentParser

import hf_metaprune as hm
from hf_metaprune.pruning.serialization import CONFIG_NAME
from hf_metaprune.training import evaluate_accuracy


@dataclass
class PruneArguments:
    model: str = field(metadata={"help": "a zoo (train_zoo output_dir or Hub id) or a save_pruned folder"})
    output_dir: str = field(metadata={"help": "checkpoints, <output_dir>/pruned and <output_dir>/results.json"})
    zoo_index: int = field(default=-1, metadata={"help": "row of the zoo to prune (-1: the last one)"})
    metapruner: str | None = field(default=None, metadata={"help": "MetaPrunerModel folder or Hub id; "
                                                                  "omit for the DepGraph baseline"})
    speed_up: float = field(default=2.0, metadata={"help": "target MACs speed-up (MACs before / after)"})
    importance: str = field(default="group_l2", metadata={"help": "pruning criterion: group_l2, group_l1, random"})
    transform_epochs: float = field(default=0.0, metadata={"help": "training epochs before pruning"})
    sparsity_lambda: float = field(default=0.0, metadata={"help": "DepGraph sparse learning in those epochs"})
    finetune_epochs: float = field(default=1.0, metadata={"help": "finetuning epochs after pruning"})
    distill: bool = field(default=False, metadata={"help": "distil from the unpruned model while finetuning"})


@dataclass
class DataArguments:
    dataset: str = field(default="../shared/data/cifar10",
                         metadata={"help": "local folder of parquet files or a Hub dataset id"})
    max_train_samples: int | None = field(default=None, metadata={"help": "use the first N training rows"})
    val_size: int = field(default=5000, metadata={"help": "validation images carved from the training split"})
    eval_test: bool = field(default=False, metadata={"help": "also report accuracy on the test split"})
    batch_size: int = field(default=128)
    learning_rate: float = field(default=0.01, metadata={"help": "peak SGD learning rate (cosine schedule)"})
    seed: int = field(default=42)
    disable_tqdm: bool = field(default=False, metadata={"help": "no progress bars (for log files)"})


def load_model(path: str, zoo_index: int) -> tuple[torch.nn.Module, str, dict]:
    """The network to prune, its timm architecture and its model kwargs (for save_pruned)."""
    if os.path.isfile(os.path.join(path, CONFIG_NAME)):
        with open(os.path.join(path, CONFIG_NAME)) as f:
            spec = json.load(f)
        return hm.load_pruned(path), spec["architecture"], spec.get("model_kwargs", {})
    zoo = hm.DataModelZoo.load(path)
    index = zoo_index % len(zoo)
    row = zoo.dataset[index]
    return zoo.model(index), row["architecture"], json.loads(row["model_kwargs"])


def main(argv: list[str] | None = None) -> dict:
    args, data_args = HfArgumentParser((PruneArguments, DataArguments)).parse_args_into_dataclasses(argv)
    state = PartialState(cpu=not torch.cuda.is_available())
    model, architecture, model_kwargs = load_model(args.model, args.zoo_index)
    data = hm.load_image_classification(data_args.dataset, val_size=data_args.val_size,
                                        max_train_samples=data_args.max_train_samples,
                                        max_test_samples=None if data_args.eval_test else 1)
    metapruner = hm.MetaPrunerModel.from_pretrained(args.metapruner).eval() if args.metapruner else None
    method = "metanetwork" if metapruner is not None else "DepGraph baseline"
    original_accuracy = evaluate_accuracy(model, data)

    result = hm.prune_and_finetune(
        model, data, args.speed_up, args.output_dir, metapruner=metapruner, transform_epochs=args.transform_epochs,
        finetune_epochs=args.finetune_epochs, importance=args.importance, sparsity_lambda=args.sparsity_lambda,
        distill=args.distill, batch_size=data_args.batch_size, learning_rate=data_args.learning_rate,
        seed=data_args.seed, disable_tqdm=data_args.disable_tqdm, report_to="none",
        use_cpu=not torch.cuda.is_available())
    prune = result.prune
    summary = {
        "method": method, "model": args.model, "architecture": architecture, "metapruner": args.metapruner,
        "speed_up_target": args.speed_up, "speed_up": prune.speed_up, "original_val_accuracy": original_accuracy,
        "val_accuracy": result.val_accuracy, "macs_before": prune.macs_before, "macs_after": prune.macs_after,
        "params_before": prune.params_before, "params_after": prune.params_after,
        "stage_seconds": result.stage_seconds, "stage_val_accuracy": result.stage_val_accuracy,
        "arguments": {**asdict(args), **asdict(data_args)}, "versions": hm.library_versions()}
    if data_args.eval_test:
        summary["original_test_accuracy"] = evaluate_accuracy(model, data, split="test")
        summary["test_accuracy"] = evaluate_accuracy(result.model, data, split="test")

    if state.is_main_process:
        hm.save_pruned(result.model, os.path.join(args.output_dir, "pruned"), architecture=architecture,
                       model_kwargs=model_kwargs)
        with open(os.path.join(args.output_dir, "results.json"), "w") as f:
            json.dump(summary, f, indent=2)
        print(f"\n{method}: {architecture} pruned to {prune.speed_up:.3f}x MACs "
              f"({prune.macs_before / 1e6:.2f}M -> {prune.macs_after / 1e6:.2f}M), "
              f"params {prune.params_before / 1e6:.3f}M -> {prune.params_after / 1e6:.3f}M")
        print(f"validation accuracy: {original_accuracy:.4f} unpruned -> {result.val_accuracy:.4f} pruned+finetuned")
        if data_args.eval_test:
            print(f"test accuracy: {summary['original_test_accuracy']:.4f} unpruned -> "
                  f"{summary['test_accuracy']:.4f} pruned+finetuned")
        print("stage validation accuracy: " + ", ".join(f"{k} {v:.4f}" for k, v in result.stage_val_accuracy.items()))
        print("stage seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in result.stage_seconds.items()))
        print(f"saved to {os.path.join(args.output_dir, 'pruned')} (reload with hm.load_pruned) and "
              f"{os.path.join(args.output_dir, 'results.json')}")
    state.wait_for_everyone()
    return summary


if __name__ == "__main__":
    main()
