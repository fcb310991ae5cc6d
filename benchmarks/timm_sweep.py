"""Generality sweep: which timm CNN families hf_metaprune represents as a graph and prunes, and how long each takes.

For every model: build it (``pretrained=False``, 10 classes), trace it to a graph and back (bit-exact?), then prune
it to ``--speed-up`` with group-L2 and check that no layer is empty and the forward still runs. Failures are
recorded with their exception type: an ``UnsupportedModuleError`` naming the module is the expected answer for a
family the pruner cannot handle; anything else is a bug. Each model runs in its own process with a time limit,
so a model whose tracing never finishes (Torch-Pruning's group search on ``rexnet_100``) is recorded as a timeout.

    python benchmarks/timm_sweep.py                       # the default families, 64×64 inputs
    python benchmarks/timm_sweep.py --models ghostnet_050 mixnet_s --resolution 32 --out results/tmp/sweep.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

DEFAULT_MODELS = ["resnext26ts", "densenet121", "mobilenetv3_small_100", "ghostnet_100", "regnety_002", "dla34",
                  "dpn48b", "mnasnet_small", "rexnet_100", "res2net50_14w_8s", "selecsls42b", "cspresnet50",
                  "tinynet_e", "lcnet_050", "repvgg_a0", "ese_vovnet19b_dw", "mixnet_s", "fbnetc_100",
                  "hardcorenas_a", "xception41", "nf_resnet26", "resnet18d", "seresnext26d_32x4d",
                  "efficientnet_lite0", "mobilevitv2_050", "convmixer_768_32", "hrnet_w18_small"]


def measure(name: str, resolution: int, speed_up: float) -> dict:
    import warnings

    import timm
    import torch

    import hf_metaprune as hm

    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10).eval()
    x = torch.randn(1, 3, resolution, resolution, generator=torch.Generator().manual_seed(0))
    row = {"model": name, "layers": sum(isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for m in model.modules())}
    start = time.perf_counter()
    try:
        again = hm.graph_to_model(hm.model_to_graph(model, x), model)
        exact = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
        row["graph"] = "bit-exact" if exact else "MISMATCH"
    except Exception as e:
        row["graph"] = f"{type(e).__name__}: {e}"
    row["graph_seconds"] = time.perf_counter() - start
    start = time.perf_counter()
    try:
        result = hm.prune_to_speedup(model, x, speed_up)
        widths = hm.pruning.module_widths(result.model)
        empty = [n for n, w in widths.items() if w["out"] == 0 or w["in"] == 0]
        result.model(x)
        row["prune"] = f"{result.speed_up:.3f}x" + (f" EMPTY {empty}" if empty else "") + \
            (f" ({result.note})" if result.note else "")
    except Exception as e:
        row["prune"] = f"{type(e).__name__}: {e}"
    row["prune_seconds"] = time.perf_counter() - start
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--speed-up", type=float, default=2.0)
    parser.add_argument("--timeout", type=float, default=300, help="seconds per model")
    parser.add_argument("--out", default="results/timm_sweep.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker, args.resolution, args.speed_up)))
        return
    rows = []
    for name in args.models:
        cmd = [sys.executable, __file__, "--worker", name, "--resolution", str(args.resolution),
               "--speed-up", str(args.speed_up)]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
            row = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else \
                {"model": name, "graph": f"worker failed: {out.stderr.strip().splitlines()[-1:]}"}
        except subprocess.TimeoutExpired:
            row = {"model": name, "graph": f"timeout after {args.timeout:.0f} s"}
        rows.append(row)
        print(f"| {row['model']} | {row.get('layers', '')} | {row['graph'][:90]} | {row.get('graph_seconds', 0):.1f} | "
              f"{row.get('prune', '')[:90]} | {row.get('prune_seconds', 0):.1f} |", flush=True)
    from hf_metaprune import library_versions

    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"rows": rows, "resolution": args.resolution, "speed_up": args.speed_up,
                   "versions": library_versions()}, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
