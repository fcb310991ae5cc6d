"""Graph conversion and one metanetwork forward for ViT-B/16 and BERT-base on CPU: time and peak memory.

    python benchmarks/transformers_memory.py                 # both models, results/transformers_memory.json
    python benchmarks/transformers_memory.py --models bert-base --hidden_size 4 --num_layers 3

Models are built from their default configs (random weights, nothing downloaded). Each model runs in a fresh
subprocess so that its peak resident memory (``ru_maxrss``) is its own. The metanetwork has the published ViT-B
size (3 layers × 4 hidden, "memory-bound"); the forward runs without gradients, as pruning a new model does.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

MODELS = ("vit-b16", "bert-base")


def measure(name: str, hidden_size: int, num_layers: int) -> dict:
    import torch
    from transformers import BertConfig, BertForSequenceClassification, ViTConfig, ViTForImageClassification

    import hf_metaprune as hm

    torch.manual_seed(0)
    if name == "vit-b16":
        model, x = ViTForImageClassification(ViTConfig(num_labels=1000)).eval(), torch.randn(1, 3, 224, 224)
    else:
        model = BertForSequenceClassification(BertConfig(num_labels=2)).eval()
        x = {"input_ids": torch.randint(0, 30522, (1, 128)), "attention_mask": torch.ones(1, 128, dtype=torch.long)}
    row = {"model": name, "params": sum(p.numel() for p in model.parameters()), "threads": torch.get_num_threads()}
    start = time.perf_counter()
    graph = hm.model_to_graph(model, x)
    row["graph_seconds"] = time.perf_counter() - start
    row["peak_rss_after_graph_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    row.update(nodes=graph.num_nodes, edges=graph.num_edges)
    metapruner = hm.MetaPrunerModel(hm.MetaPrunerConfig.for_graphs(
        [graph], hidden_size=hidden_size, num_layers=num_layers, init_identity=False)).eval()
    start = time.perf_counter()
    with torch.no_grad():
        new_graph = metapruner(graph)
    row["metanetwork_forward_seconds"] = time.perf_counter() - start
    row["peak_rss_after_forward_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    start = time.perf_counter()
    transformed = hm.graph_to_model(new_graph, model)
    row["graph_to_model_seconds"] = time.perf_counter() - start
    changed = sum(int(not torch.equal(a, b)) for a, b in zip(model.parameters(), transformed.parameters()))
    row["parameters_changed"] = f"{changed}/{len(list(model.parameters()))}"
    row["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--hidden_size", type=int, default=4)
    parser.add_argument("--num_layers", type=int, default=3)
    parser.add_argument("--output", default="results/transformers_memory.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:  # one model in this process
        print(json.dumps(measure(args.worker, args.hidden_size, args.num_layers)))
        return
    rows = []
    for name in args.models:
        proc = subprocess.run([sys.executable, __file__, "--worker", name, "--hidden_size", str(args.hidden_size),
                               "--num_layers", str(args.num_layers)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{name} failed:\n{proc.stderr[-3000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    print(f"\nmetanetwork {args.num_layers} layers × {args.hidden_size} hidden, CPU, {rows[0]['threads']} threads\n")
    print("| model | params | graph nodes | graph edges | model→graph (s) | metanetwork forward (s) | graph→model (s) "
          "| peak RSS (GiB) |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['params'] / 1e6:.1f}M | {r['nodes']:,} | {r['edges']:,} | {r['graph_seconds']:.1f} "
              f"| {r['metanetwork_forward_seconds']:.1f} | {r['graph_to_model_seconds']:.1f} | {r['peak_rss_gib']:.2f} |")
    from hf_metaprune import library_versions  # after the workers: the parent's own memory is not measured

    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    with open(args.output, "w") as f:
        json.dump({"rows": rows, "hidden_size": args.hidden_size, "num_layers": args.num_layers,
                   "versions": library_versions()}, f, indent=2)


if __name__ == "__main__":
    main()
