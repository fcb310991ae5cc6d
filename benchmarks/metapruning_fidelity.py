"""MetaPruning's proxy fidelity: does the search's fitness rank structures as finetuning does?

    python benchmarks/metapruning_fidelity.py            # ~25 min on 2 CPU cores; resumable (outputs/metapruning-fidelity)

A PruningNet starts from a converged CIFAR ResNet-20 (data model ``--model_index`` of the committed zoo, on the
zoo's own 45k / 5k split so the validation images are unseen) and is trained ``--pruningnet_epochs`` by stochastic
structure sampling. ``--num_genes`` random structures in the search's MACs window at ``--speed_up`` (the distribution
of the search's initial population) are then scored twice: the search's fitness (generated weights, BatchNorm
recalibrated on 2000 training images, accuracy on ``--eval_samples`` validation images) and the validation accuracy
after finetuning the generated network ``--finetune_epochs``. Kendall's τ-b between the two is the proxy's fidelity
(1: the search ranks exactly as finetuning would). Writes ``results/metapruning_fidelity.{json,md}`` with the library
versions. Selection-free: the test split is never read.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field

import torch
from transformers import HfArgumentParser, TrainingArguments, set_seed

import hf_metaprune as hm
from hf_metaprune.methods.pruningnet import sample_genes
from hf_metaprune.pruning import recalibration_batches


@dataclass
class FidelityArguments:
    dataset: str = field(default="../shared/data/cifar10")
    zoo: str = field(default="zoos/cifar10-resnet20/zoo", metadata={"help": "the PruningNet starts from one model"})
    model_index: int = field(default=8, metadata={"help": "which zoo model (8: full width, held out from meta-training)"})
    val_size: int = field(default=5000, metadata={"help": "must match the zoo's recipe"})
    speed_up: float = field(default=2.0)
    window: float = field(default=0.03)
    num_genes: int = field(default=12)
    hidden_size: int = field(default=32)
    pruningnet_epochs: float = field(default=1.0)
    pruningnet_learning_rate: float = field(default=0.02, metadata={"help": "SGD; low: it starts from a trained net"})
    eval_samples: int = field(default=2000, metadata={"help": "validation images of the search's fitness"})
    finetune_epochs: float = field(default=1.0)
    finetune_learning_rate: float = field(default=0.02)
    batch_size: int = field(default=128)
    bf16: bool = field(default=True)
    seed: int = field(default=0)
    output_dir: str = field(default="outputs/metapruning-fidelity")
    results_dir: str = field(default="results")


def kendall_tau_b(x: list[float], y: list[float]) -> float:
    """Kendall's τ-b (ties in either ranking handled), from the pair counts."""
    concordant = discordant = ties_x = ties_y = 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif (dx > 0) == (dy > 0):
                concordant += 1
            else:
                discordant += 1
    denominator = ((concordant + discordant + ties_x) * (concordant + discordant + ties_y)) ** 0.5
    return (concordant - discordant) / denominator if denominator else 0.0


def main(argv: list[str] | None = None) -> dict:
    (args,) = HfArgumentParser(FidelityArguments).parse_args_into_dataclasses(argv)
    cpu = not torch.cuda.is_available()
    start = time.time()
    zoo = hm.DataModelZoo.load(args.zoo)
    data = hm.load_image_classification(args.dataset, val_size=args.val_size, seed=0)
    zoo.check_data(data)  # validation images the starting network never trained on
    train = dict(report_to="none", use_cpu=cpu, bf16=args.bf16, disable_tqdm=True, seed=args.seed)
    folder = os.path.join(args.output_dir, "pruningnet")
    seconds = {}
    if os.path.isfile(os.path.join(folder, "config.json")):
        pruningnet = hm.PruningNetModel.from_pretrained(folder).eval()
    else:
        t = time.time()
        set_seed(args.seed)
        pruningnet = hm.PruningNetModel.from_network(zoo.model(args.model_index), hidden_size=args.hidden_size,
                                                     dataset=args.dataset)
        training = TrainingArguments(
            output_dir=os.path.join(args.output_dir, "pruningnet_run"), num_train_epochs=args.pruningnet_epochs,
            per_device_train_batch_size=args.batch_size, learning_rate=args.pruningnet_learning_rate, optim="sgd",
            weight_decay=5e-4, lr_scheduler_type="cosine", save_strategy="no", logging_steps=50, **train)
        trainer = hm.PruningNetTrainer(pruningnet, training, data)
        trainer.train()
        pruningnet = trainer.accelerator.unwrap_model(trainer.model).eval()
        pruningnet.save_pretrained(folder)
        seconds["pruningnet_training"] = time.time() - t
    genes = sample_genes(pruningnet, args.speed_up, args.num_genes, window=args.window, seed=args.seed)
    recal = recalibration_batches(data, 2000, seed=args.seed)
    collate = data.collator(augment=False)
    n_eval = min(args.eval_samples, len(data.validation))
    evals = [collate([data.validation[j] for j in range(i, min(i + 250, n_eval))]) for i in range(0, n_eval, 250)]
    rows = []
    for k, gene in enumerate(genes):
        path = os.path.join(args.output_dir, f"gene-{k}.json")
        if os.path.isfile(path):
            with open(path) as f:
                row = json.load(f)
            if row["gene"] == gene:
                rows.append(row)
                continue
        t = time.time()
        fitness = pruningnet.evaluate_gene(gene, recal, evals)
        fitness_seconds = time.time() - t
        model = pruningnet.generate(gene, recal).model
        tuned = hm.finetune(model, data, os.path.join(args.output_dir, f"finetune-{k}"), epochs=args.finetune_epochs,
                            batch_size=args.batch_size, learning_rate=args.finetune_learning_rate, **train)
        row = {"gene": gene, "widths": pruningnet.widths(gene),
               "speed_up": pruningnet.macs(pruningnet.full_gene()) / pruningnet.macs(gene), "fitness": fitness,
               "finetuned_val_accuracy": tuned.val_accuracy, "fitness_seconds": fitness_seconds,
               "finetune_seconds": time.time() - t - fitness_seconds}
        with open(path, "w") as f:
            json.dump(row, f)
        rows.append(row)
        print(f"gene {k}: {row['speed_up']:.2f}x, fitness {fitness:.4f}, finetuned {tuned.val_accuracy:.4f}",
              flush=True)
    fitness, finetuned = [r["fitness"] for r in rows], [r["finetuned_val_accuracy"] for r in rows]
    tau = kendall_tau_b(fitness, finetuned)
    best_by_fitness = max(range(len(rows)), key=lambda i: fitness[i])
    rank = sorted(finetuned, reverse=True).index(finetuned[best_by_fitness]) + 1
    table = "\n".join(["| gene | MACs speed-up | fitness (val, %) | after finetuning (val, %) |", "|---|---|---|---|"] +
                      [f"| {i} | {r['speed_up']:.3f}x | {r['fitness'] * 100:.2f} | "
                       f"{r['finetuned_val_accuracy'] * 100:.2f} |" for i, r in enumerate(rows)])
    summary = {"kendall_tau_b": tau, "best_by_fitness": best_by_fitness, "its_rank_after_finetuning": rank,
               "rows": rows, "table": table, "seconds": {**seconds, "total_this_run": time.time() - start},
               "arguments": asdict(args), "versions": hm.library_versions()}
    os.makedirs(args.results_dir, exist_ok=True)
    prefix = os.path.join(args.results_dir, "metapruning_fidelity")
    with open(f"{prefix}.json", "w") as f:
        json.dump(summary, f, indent=2)
    text = (f"{table}\n\nKendall τ-b (fitness vs finetuned accuracy, {len(rows)} genes): {tau:.3f}; the gene the "
            f"search would pick ranks {rank} of {len(rows)} after finetuning.\n")
    with open(f"{prefix}.md", "w") as f:
        f.write(text)
    print(f"\n{text}\nwritten to {prefix}.json, .md", flush=True)
    return summary


if __name__ == "__main__":
    main()
