"""MetaPruning end to end: train a PruningNet by stochastic structure sampling, search the best structure under a
MACs budget (evolutionary search, fitness = validation accuracy of generated weights after BatchNorm recalibration),
then finetune it from the generated weights (or retrain it from scratch, as the paper does) and compare with a
uniform width multiplier at the same MACs trained with the same budget.

    python examples/metapruning.py --output_dir outputs/metapruning --speed_up 2
    accelerate launch examples/metapruning.py --output_dir outputs/metapruning     # training stages data-parallel
    # start the PruningNet from a trained network (a zoo row) instead of from scratch, on the zoo's own data split
    # (its validation rows are the ones its models never trained on; other data is refused):
    python examples/metapruning.py --init_from zoos/cifar10-resnet20/base --max_train_samples 0 --val_size 5000 \
        --output_dir outputs/metapruning-init

``--method graphpruning`` runs GraphPruning instead (examples/graphpruning.py): the same trainer and finetuning, the
generators fed by a GCN over the layer graph, and a DDPG search (``--rl_warmup`` random + ``--rl_episodes`` agent
episodes) in place of the evolutionary one.

The defaults are sized for 2 CPU cores (~15 min: 20k training images, 3 PruningNet epochs, a short search, 3
finetuning epochs); the paper's budget is ``--pruningnet_epochs 50 --num_iterations 20 --population 50`` and a full
retraining (``--from_scratch --finetune_epochs 160``). The searched network is saved with ``hm.save_pruned`` to
``<output_dir>/searched``, the PruningNet with ``save_pretrained`` to ``<output_dir>/pruningnet``, the numbers to
``<output_dir>/results.json``. Selection uses the validation split carved from the training data; the test split is
read once, for the final table.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field

import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list
from transformers import HfArgumentParser, TrainingArguments, set_seed

import hf_metaprune as hm
from hf_metaprune.pruning import recalibration_batches
from hf_metaprune.training import evaluate_accuracy


@dataclass
class MetaPruningArguments:
    output_dir: str = field(default="outputs/metapruning")
    method: str = field(default="pruningnet", metadata={"help": "pruningnet (MetaPruning) or graphpruning"})
    dataset: str = field(default="../shared/data/cifar10", metadata={"help": "parquet folder or Hub dataset id"})
    architecture: str = field(default="cifar_resnet20")
    init_from: str | None = field(default=None, metadata={"help": "a zoo folder: start from its first model"})
    max_train_samples: int = field(default=20000, metadata={"help": "first N training rows (0: all)"})
    val_size: int = field(default=2000)
    speed_up: float = field(default=2.0, metadata={"help": "target MACs speed-up"})
    window: float = field(default=0.03, metadata={"help": "accepted MACs: [(1 - window), 1] x budget"})
    hidden_size: int = field(default=32)
    pruningnet_epochs: float = field(default=3.0)
    pruningnet_learning_rate: float = field(default=0.1)
    num_iterations: int = field(default=6)
    population: int = field(default=16)
    recalibration_samples: int = field(default=2000)
    eval_samples: int = field(default=2000)
    gcn_hidden_size: int = field(default=64, metadata={"help": "graphpruning: the GCN aggregator's width"})
    rl_warmup: int = field(default=30, metadata={"help": "graphpruning: random warm-up episodes (AMC: 100)"})
    rl_episodes: int = field(default=60, metadata={"help": "graphpruning: DDPG episodes (AMC: 800)"})
    from_scratch: bool = field(default=False, metadata={"help": "retrain the searched structure from scratch"})
    finetune_epochs: float = field(default=3.0)
    finetune_learning_rate: float = field(default=0.05)
    batch_size: int = field(default=128)
    seed: int = field(default=0)
    disable_tqdm: bool = field(default=False)


def main(argv: list[str] | None = None) -> dict | None:
    (args,) = HfArgumentParser(MetaPruningArguments).parse_args_into_dataclasses(argv)
    if args.method not in ("pruningnet", "graphpruning"):
        raise ValueError(f"--method must be 'pruningnet' or 'graphpruning', got {args.method!r}")
    method = hm.get_method(args.method)
    extra = {"gcn_hidden_size": args.gcn_hidden_size} if args.method == "graphpruning" else {}
    cpu = not torch.cuda.is_available()
    state = PartialState(cpu=cpu)
    set_seed(args.seed)
    data = hm.load_image_classification(args.dataset, val_size=args.val_size, seed=args.seed,
                                        max_train_samples=args.max_train_samples or None)
    seconds = {}

    # 1. the PruningNet, trained by stochastic structure sampling
    t = time.time()
    if args.init_from:
        zoo = hm.DataModelZoo.load(args.init_from)
        try:  # a validation split the zoo model trained on would make the search's selection meaningless
            zoo.check_data(data)
        except ValueError as e:
            raise ValueError(f"--init_from {args.init_from}: {e}. Pass the --dataset, --max_train_samples and "
                             "--val_size (and --seed) the zoo was trained with") from e
        pruningnet = method.model_class.from_network(zoo.model(0), hidden_size=args.hidden_size, dataset=args.dataset,
                                                     **extra)
    else:
        pruningnet = method.model_class(method.config_class(
            base_architecture=args.architecture, base_model_kwargs={"num_classes": data.num_classes},
            input_shape=list(data.example_inputs().shape[1:]), hidden_size=args.hidden_size, dataset=args.dataset,
            **extra))
    training = TrainingArguments(
        output_dir=os.path.join(args.output_dir, "pruningnet_run"), num_train_epochs=args.pruningnet_epochs,
        per_device_train_batch_size=args.batch_size, learning_rate=args.pruningnet_learning_rate, optim="sgd",
        weight_decay=5e-4, lr_scheduler_type="cosine", warmup_steps=0.05, save_strategy="no", logging_steps=50,
        report_to="none", disable_tqdm=args.disable_tqdm, use_cpu=cpu, seed=args.seed)
    trainer = method.trainer_class(pruningnet, training, data)
    trainer.train()
    pruningnet = trainer.accelerator.unwrap_model(trainer.model).eval()
    seconds["pruningnet_training"] = time.time() - t

    # 2. the search (validation split only), on the main process; the gene is then shared
    t = time.time()
    found = None
    if state.is_main_process:
        common = dict(window=args.window, recalibration_samples=args.recalibration_samples,
                      eval_samples=args.eval_samples, seed=args.seed, disable_tqdm=args.disable_tqdm)
        if args.method == "graphpruning":  # DDPG over the coupled groups, AMC's action wall keeps the budget
            found = pruningnet.search(data, args.speed_up, episodes=args.rl_episodes, warmup=args.rl_warmup, **common)
        else:
            found = pruningnet.search(data, args.speed_up, num_iterations=args.num_iterations,
                                      population=args.population, top_k=args.population,
                                      num_parents=max(2, args.population // 5), mutations=args.population // 2,
                                      crossovers=args.population // 2, **common)
        pruningnet.config.validation_scores = {"searched_val_accuracy": found.val_accuracy}
        pruningnet.save_pretrained(os.path.join(args.output_dir, args.method))
        print(f"searched gene {found.gene} -> widths {found.widths}, {found.speed_up:.2f}x MACs, proxy validation "
              f"accuracy {found.val_accuracy:.4f} ({found.evaluated} genes, {time.time() - t:.0f}s)", flush=True)
    gene = broadcast_object_list([found.gene if found is not None else None])[0]
    seconds["search"] = time.time() - t

    # 3. the searched structure vs a uniform width multiplier at the same MACs, the same training budget (every
    # process finetunes, data-parallel; the main process evaluates and writes)
    uniform = _uniform_gene(pruningnet, pruningnet.macs(gene))
    recal = recalibration_batches(data, args.recalibration_samples, seed=args.seed)
    rows = []
    searched = "GraphPruning (searched)" if args.method == "graphpruning" else "MetaPruning (searched)"
    for name, g in ((searched, gene), ("uniform width", uniform)):
        t = time.time()
        model = pruningnet.generate(g, recal, from_scratch=args.from_scratch).model
        result = hm.finetune(model, data, os.path.join(args.output_dir, f"finetune-{len(rows)}"),
                             epochs=args.finetune_epochs, batch_size=args.batch_size,
                             learning_rate=args.finetune_learning_rate, seed=args.seed, report_to="none",
                             disable_tqdm=args.disable_tqdm, use_cpu=cpu)
        macs, params = hm.count_macs_and_params(result.model, data.example_inputs())
        rows.append({"method": name, "gene": list(g), "widths": pruningnet.widths(g),
                     "speed_up": pruningnet.macs(pruningnet.full_gene()) / macs, "params": params,
                     "val_accuracy": result.val_accuracy, "model": result.model, "seconds": time.time() - t})
    summary = None
    if state.is_main_process:
        hm.save_pruned(rows[0]["model"], os.path.join(args.output_dir, "searched"), architecture=args.architecture)
        for r in rows:
            r["test_accuracy"] = evaluate_accuracy(r.pop("model"), data, split="test")
        table = "\n".join(["| structure | MACs speed-up | params | val acc | test acc |", "|---|---|---|---|---|"] +
                          [f"| {r['method']} | {r['speed_up']:.2f}x | {r['params'] / 1e3:.1f}k | "
                           f"{r['val_accuracy']:.4f} | {r['test_accuracy']:.4f} |" for r in rows])
        summary = {"table": table, "rows": rows, "search_history": found.history, "seconds": seconds,
                   "arguments": asdict(args), "versions": hm.library_versions()}
        with open(os.path.join(args.output_dir, "results.json"), "w") as f:
            json.dump(summary, f, indent=2)
        print(f"\n{table}\n\nwritten to {os.path.join(args.output_dir, 'results.json')}", flush=True)
    state.wait_for_everyone()
    return summary


def _uniform_gene(pruningnet: hm.PruningNetModel, macs: float) -> list[int]:
    """The uniform gene (every group at one ratio) whose MACs are closest to ``macs`` without exceeding it."""
    fitting = [i for i in range(len(pruningnet.config.width_ratios))
               if pruningnet.macs([i] * pruningnet.num_genes) <= macs]
    return [max(fitting) if fitting else 0] * pruningnet.num_genes


if __name__ == "__main__":
    main()
