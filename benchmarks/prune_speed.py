"""Prune-time cost and the real CPU speed-up of pruned models.

For each model: graph build, metanetwork forward, pruning to the target MACs speed-up (the three stages of
``MetaPrunerModel.prune``), peak memory (RSS high-water mark of this process), and CPU latency (``--batch``,
channels-last for convolutions) of the original, the pruned model, the model pruned with ``round_to`` (channel counts kept to
multiples of 8) and the model pruned to the target in *latency* (a :class:`~hf_metaprune.LatencyTable` measured on this
machine at the same batch size, with ``round_to``), measured interleaved in one run — beside Torch-Pruning's own
``MetaPruner`` (global group-L2 magnitude, stepped until the same MACs target; with and without ``round_to``) on the
same transformed model: its time to prune and its measured latency.

    python benchmarks/prune_speed.py --models cifar_resnet56 --repeats 20 --out results/prune_speed_resnet56.json
    python benchmarks/prune_speed.py --models resnet50 vit_base_patch16_224 --speed-up 2.0 --batch 8 \
        --out results/prune_speed_224.json
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import time

import timm
import torch

import hf_metaprune as hm
from hf_metaprune.pruning import measure_latency, prune_to_speedup

# Published metanetwork sizes (DESIGN.md): ResNet-56 8 layers x 64 hidden, ResNet-50 6 x 16, ViT-B 3 x 4.
METANET = {"cifar_resnet56": dict(num_layers=8, hidden_size=64), "resnet50": dict(num_layers=6, hidden_size=16),
           "vit_base_patch16_224": dict(num_layers=3, hidden_size=4)}
RESOLUTION = {"cifar_resnet56": 32, "resnet50": 224, "vit_base_patch16_224": 224}


def torch_pruning_to_macs(model: torch.nn.Module, x: torch.Tensor, speed_up: float, round_to: int | None
                          ) -> tuple[torch.nn.Module, float, float]:
    """Torch-Pruning's own path to a MACs target: ``MetaPruner`` with global group-L2 importance, 1 % of the
    channels per step until MACs reach ``speed_up``. Returns (model, MACs speed-up, seconds)."""
    import torch_pruning as tp

    model = copy.deepcopy(model).eval()
    start = time.perf_counter()
    base, _ = tp.utils.count_ops_and_params(model, x)
    # timm attention (fused qkv): Torch-Pruning's ViT example setting, the same channels of every head removed
    # (its whole-head pruning fails under global ranking in 1.6: head_thres unbound when a step removes no head)
    attention = [m for m in model.modules() if isinstance(m, timm.layers.Attention)]
    pruner = tp.pruner.MetaPruner(model, x, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                  pruning_ratio=0.95, iterative_steps=95, global_pruning=True,
                                  ignored_layers=[model.get_classifier()], round_to=round_to,
                                  num_heads={m.qkv: m.num_heads for m in attention}, prune_head_dims=True)
    macs = base
    for _ in range(95):
        pruner.step()
        for m in attention:  # timm's forward reads these
            m.head_dim = m.qkv.out_features // (3 * m.num_heads)
            m.attn_dim = m.num_heads * m.head_dim
        macs, _ = tp.utils.count_ops_and_params(model, x)
        if base / macs >= speed_up:
            break
    return model, base / macs, time.perf_counter() - start


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run(name: str, speed_up: float, batch: int, repeats: int, round_to: int, latency_table_runs: int) -> dict:
    torch.manual_seed(0)
    res = RESOLUTION.get(name, 224)
    channels_last = "vit" not in name  # a memory format for convolutions
    model = timm.create_model(name, pretrained=False, num_classes=10 if name.startswith("cifar") else 1000).eval()
    x1 = torch.randn(1, 3, res, res)
    t0 = time.perf_counter()
    graph = hm.model_to_graph(model, x1)
    t1 = time.perf_counter()
    # encoders for the graph's edge kinds (a ViT's patch embedding and token embeddings are kinds of their own)
    metanet = hm.MetaPrunerModel(hm.MetaPrunerConfig.for_graphs([graph], **METANET.get(name, {}))).eval()
    with torch.no_grad():
        new_graph = metanet(graph)
    transformed = hm.graph_to_model(new_graph, model)
    t2 = time.perf_counter()
    result = prune_to_speedup(transformed, x1, speed_up)
    t3 = time.perf_counter()
    rounded = prune_to_speedup(transformed, x1, speed_up, round_to=round_to)
    xb = torch.randn(batch, 3, res, res)
    t4 = time.perf_counter()
    table = hm.LatencyTable.measure(transformed, xb, channels_last=channels_last, runs=latency_table_runs)
    t5 = time.perf_counter()
    by_latency = prune_to_speedup(transformed, x1, speed_up, round_to=round_to, latency_table=table)

    tp_plain, tp_plain_speed_up, tp_plain_s = torch_pruning_to_macs(transformed, x1, speed_up, None)
    tp_rounded, tp_rounded_speed_up, tp_rounded_s = torch_pruning_to_macs(transformed, x1, speed_up, round_to)

    models = {"original": model, "pruned": result.model, "rounded": rounded.model, "latency": by_latency.model,
              "tp": tp_plain, "tp_rounded": tp_rounded}
    lat = {k: v * 1e3 for k, v in measure_latency(models, xb, runs=repeats, warmup=1,
                                                  channels_last=channels_last).items()}
    return {
        "model": name,
        "batch": batch,
        "channels_last": channels_last,
        "target_speed_up": speed_up,
        "achieved_macs_speed_up": round(result.speed_up, 4),
        "graph_nodes": graph.num_nodes,
        "graph_edges": graph.num_edges,
        "metanetwork": METANET.get(name, {}),
        "graph_build_s": round(t1 - t0, 3),
        "metanetwork_forward_s": round(t2 - t1, 3),
        "prune_s": round(t3 - t2, 3),
        "total_prune_call_s": round(t3 - t0, 3),
        "pruning_steps": result.steps,
        "macs_before_M": round(result.macs_before / 1e6, 2),
        "macs_after_M": round(result.macs_after / 1e6, 2),
        "params_before_M": round(result.params_before / 1e6, 3),
        "params_after_M": round(result.params_after / 1e6, 3),
        "latency_original_ms": round(lat["original"], 2),
        "latency_pruned_ms": round(lat["pruned"], 2),
        "measured_speed_up": round(lat["original"] / lat["pruned"], 3),
        "round_to": round_to,
        "achieved_macs_speed_up_round_to": round(rounded.speed_up, 4),
        "latency_round_to_ms": round(lat["rounded"], 2),
        "measured_speed_up_round_to": round(lat["original"] / lat["rounded"], 3),
        "latency_table_s": round(t5 - t4, 2),
        "latency_table_layers": len(table.layers),
        "estimated_speed_up_latency_target": round(by_latency.latency_speed_up, 4),
        "achieved_macs_speed_up_latency_target": round(by_latency.speed_up, 4),
        "latency_latency_target_ms": round(lat["latency"], 2),
        "measured_speed_up_latency_target": round(lat["original"] / lat["latency"], 3),
        "torch_pruning_prune_s": round(tp_plain_s, 3),
        "torch_pruning_macs_speed_up": round(tp_plain_speed_up, 4),
        "measured_speed_up_torch_pruning": round(lat["original"] / lat["tp"], 3),
        "torch_pruning_round_to_prune_s": round(tp_rounded_s, 3),
        "torch_pruning_round_to_macs_speed_up": round(tp_rounded_speed_up, 4),
        "measured_speed_up_torch_pruning_round_to": round(lat["original"] / lat["tp_rounded"], 3),
        "peak_rss_GiB_so_far": round(peak_rss_gib(), 2),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["cifar_resnet56", "resnet50", "vit_base_patch16_224"])
    parser.add_argument("--speed-up", type=float, default=2.3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--round-to", type=int, default=8, help="channel multiple of the rounded variant")
    parser.add_argument("--latency-table-runs", type=int, default=10, help="timed calls per table entry")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", default="results/prune_speed_224.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rows = []
    for name in args.models:  # written after every model, so a failure keeps the rows before it
        rows.append(run(name, args.speed_up, args.batch, args.repeats, args.round_to, args.latency_table_runs))
        print(rows[-1], flush=True)
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"device": "cpu", "threads": args.threads, "versions": hm.library_versions(), "rows": rows}, f,
                      indent=2)
    cols = ["model", "graph_edges", "graph_build_s", "metanetwork_forward_s", "prune_s", "total_prune_call_s",
            "achieved_macs_speed_up", "latency_original_ms", "latency_pruned_ms", "measured_speed_up",
            "achieved_macs_speed_up_round_to", "latency_round_to_ms", "measured_speed_up_round_to",
            "latency_table_s", "estimated_speed_up_latency_target", "achieved_macs_speed_up_latency_target",
            "measured_speed_up_latency_target", "torch_pruning_prune_s", "torch_pruning_macs_speed_up",
            "measured_speed_up_torch_pruning", "torch_pruning_round_to_macs_speed_up",
            "measured_speed_up_torch_pruning_round_to", "peak_rss_GiB_so_far"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
