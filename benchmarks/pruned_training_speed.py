"""Training throughput of a pruned network against its unpruned base, by precision and memory layout.

Why: in the CIFAR benchmark a 2x-pruned ResNet-20 finetunes *slower* per epoch than the full base model trains.
Pruning leaves channel counts such as 13, 7 or 5; this measures what that costs on the CPU (bf16 autocast, whose
fast kernels want channel counts that are multiples of 8, and channels-last) and what rounding the widths
(``prune_to_speedup(..., round_to=8)``) buys back. One SGD step (forward, backward, optimizer) on a random batch;
every configuration is timed once per repetition, interleaved, so load drift hits them alike; medians reported.

    python benchmarks/pruned_training_speed.py                       # cifar_resnet20, 2x, round_to none / 8 / 16
    python benchmarks/pruned_training_speed.py --architecture cifar_resnet56 --speed_up 3
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
import warnings

import timm
import torch
import torch.nn.functional as F

warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated")  # torch_geometric, at import

import hf_metaprune as hm  # noqa: E402

SETTINGS = [(bf16, channels_last) for bf16 in (False, True) for channels_last in (False, True)]


def setting_name(bf16: bool, channels_last: bool) -> str:
    return f"{'bf16' if bf16 else 'fp32'} {'channels-last' if channels_last else 'NCHW'}"


class Stepper:
    """One network trained in one setting: a private copy, its optimizer and its input layout."""

    def __init__(self, model: torch.nn.Module, bf16: bool, channels_last: bool, batch: tuple[torch.Tensor, ...]):
        self.model = copy.deepcopy(model).train()
        layout = torch.channels_last if channels_last else torch.contiguous_format
        self.model.to(memory_format=layout)
        self.x, self.y = batch[0].contiguous(memory_format=layout), batch[1]
        self.bf16 = bf16
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)

    def step(self) -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            loss = F.cross_entropy(self.model(self.x), self.y)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--architecture", default="cifar_resnet20")
    parser.add_argument("--speed_up", type=float, default=2.0, help="MACs speed-up pruned to (group-L2)")
    parser.add_argument("--round_to", type=int, nargs="+", default=[0, 8, 16], help="0: widths as pruned")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--repetitions", type=int, default=15, help="timed steps per configuration (2 more warm up)")
    parser.add_argument("--output", default="results/pruned_training_speed.json")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    base = timm.create_model(args.architecture, pretrained=False)
    example = torch.randn(1, 3, 32, 32)
    models = {"base": (base, 1.0)}
    for r in args.round_to:
        pruned = hm.prune_to_speedup(base, example, args.speed_up, round_to=r or None)
        models[f"pruned, round_to={r}" if r else "pruned"] = (pruned.model, pruned.speed_up)
    batch = (torch.randn(args.batch_size, 3, 32, 32), torch.randint(0, 10, (args.batch_size,)))
    steppers = {(name, s): Stepper(model, *s, batch) for name, (model, _) in models.items() for s in SETTINGS}
    times: dict[tuple, list[float]] = {key: [] for key in steppers}
    for repetition in range(args.repetitions + 2):
        for key, stepper in steppers.items():
            seconds = stepper.step()
            if repetition >= 2:
                times[key].append(seconds)

    throughput = {key: args.batch_size / statistics.median(t) for key, t in times.items()}
    header = "| network | MACs speed-up | conv widths | " + " | ".join(f"{setting_name(*s)} (img/s)" for s in SETTINGS)
    lines = [header + " |", "|---" * (3 + len(SETTINGS)) + "|"]
    rows = []
    for name, (model, speed_up) in models.items():
        widths = [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
        cells = [f"{throughput[(name, s)]:.0f} ({throughput[(name, s)] / throughput[('base', s)]:.2f}×)"
                 for s in SETTINGS]
        shown = ", ".join(map(str, widths[:8])) + ", …"
        lines.append(f"| {name} | {speed_up:.2f}× | {shown} | " + " | ".join(cells) + " |")
        rows.append({"network": name, "speed_up": speed_up, "conv_widths": widths,
                     "images_per_second": {setting_name(*s): throughput[(name, s)] for s in SETTINGS}})
    table = "\n".join(lines)
    summary = {"arguments": vars(args), "table": table, "rows": rows, "torch_threads": torch.get_num_threads(),
               "versions": hm.library_versions()}
    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(summary, f, indent=2)
    print(f"{args.architecture}, batch {args.batch_size}, {torch.get_num_threads()} threads, median of "
          f"{args.repetitions} interleaved steps (ratio to the base model in the same setting):\n\n{table}\n\n"
          f"written to {args.output}", flush=True)
    return summary


if __name__ == "__main__":
    main()
