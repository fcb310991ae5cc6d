"""Cost of one meta-training step: MetaPrunerTrainer's one-GNN-backward-per-K-batches step vs the published
per-batch formulation, against the cost of training the target network itself.

Measured on the real code path: a :class:`MetaPrunerTrainer` over an in-memory zoo of one data model
(``DataModelZoo.encode`` + ``datasets.Dataset.from_list(..., features=ZOO_FEATURES)``), stepped the way
``Trainer``'s inner loop steps it (``training_step`` — i.e. ``compute_loss`` / ``_task_gradient`` and the backward
through the GNN — then gradient clipping, optimizer and scheduler step, ``zero_grad``). Per model:

* ``T``: one forward+backward of the target network on one task batch (``functional_call`` with the
  metanetwork's output as leaves, eval-mode BN: exactly what ``_task_gradient`` does per batch; batch pre-collated);
* ``S_K``: one meta-training step as implemented, for each K in ``--ks`` (GNN forward, K task batches collated
  and run forward+backward, one GNN backward through the surrogate, optimizer step);
* ``P``: one step of the per-batch formulation (published code): GNN forward, target forward+backward *through*
  ``W'``, GNN backward, optimizer step — on one task batch. K batches cost ``K·P`` (each batch is the same work).

All configurations are timed interleaved (one of each per repetition, so load drift hits them alike); medians
are reported. Per epoch of task data (``N`` task batches) ours costs ``N/K · S_K`` and the per-batch formulation
``N · P``; the speed-up is ``K·P / S_K``, bounded by ``P/T = 1 + G/T`` as K grows (G: GNN forward+backward).
Before timing, both formulations' metanetwork gradients are checked equal on the same batch (K = 1).

    python benchmarks/meta_train_speed.py                 # cifar_resnet20 + cifar_resnet56, K in 1 8 32
    python benchmarks/meta_train_speed.py --quick         # < 1 min smoke run
    python benchmarks/meta_train_speed.py --models cifar_resnet56 --ks 1 16 --hidden_size 32 --num_layers 4
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import resource
import statistics
import tempfile
import time
import warnings

import datasets
import timm
import torch
import torch.nn.functional as F
from torch.func import functional_call

import hf_metaprune as hm
from hf_metaprune.data import ImageClassificationData, TensorImageDataset
from hf_metaprune.pruning import count_macs_and_params
from hf_metaprune.pruning import sparsity_penalty
from hf_metaprune.training.zoo import ZOO_FEATURES, DataModelZoo

# Published metanetwork size for ResNet-56 (DESIGN.md): 8 layers x 64 hidden; ResNet-20 uses the same.
METANET = {"cifar_resnet20": dict(num_layers=8, hidden_size=64), "cifar_resnet56": dict(num_layers=8, hidden_size=64)}
DEFAULT_CIFAR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "cifar10")


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def load_data(source: str, images_needed: int) -> tuple[ImageClassificationData, str]:
    """Real CIFAR-10 (a parquet folder, only as many rows as the largest step draws) or random 32x32 images."""
    val = 256
    if source != "random" and os.path.isdir(source):
        data = hm.load_image_classification(source, val_size=val, max_train_samples=images_needed + val,
                                            max_test_samples=1)
        return data, os.path.normpath(source)
    if source != "random":
        warnings.warn(f"{source} not found: using random images")
    g = torch.Generator().manual_seed(0)
    n = images_needed + val
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    return ImageClassificationData(TensorImageDataset(images[val:], labels[val:]),
                                   TensorImageDataset(images[:val], labels[:val]), None, 10), "random"


class Bench:
    """A MetaPrunerTrainer on a one-model zoo of ``name``, and the three measured operations."""

    def __init__(self, name: str, data: ImageClassificationData, hidden_size: int, num_layers: int,
                 task_batch_size: int, output_dir: str):
        torch.manual_seed(0)
        model = timm.create_model(name, pretrained=False, num_classes=data.num_classes).eval()
        x = data.example_inputs()
        macs, _ = count_macs_and_params(model, x)
        row = DataModelZoo.encode(model, name, {"num_classes": data.num_classes}, seed=0, val_accuracy=0.0, macs=macs)
        zoo = DataModelZoo(datasets.Dataset.from_list([row], features=ZOO_FEATURES))
        graph = hm.model_to_graph(zoo.model(0), x)
        config = hm.MetaPrunerConfig.for_graphs([graph], hidden_size=hidden_size, num_layers=num_layers)
        # init_identity=False: an identity-initialised decoder has zero last layers; timing is the same either way,
        # but non-zero gradients everywhere make the gradient check below meaningful.
        config.init_identity = False
        self.metanet = hm.MetaPrunerModel(config)
        args = hm.MetaPrunerTrainingArguments(
            output_dir=output_dir, per_device_train_batch_size=1, task_batch_size=task_batch_size,
            task_batches_per_step=1, prune_aware_weight=0.0, sparsity_relative=False, use_cpu=True, report_to=[],
            save_strategy="no", logging_strategy="no",
            disable_tqdm=True, seed=0)
        self.trainer = hm.MetaPrunerTrainer(self.metanet, args, zoo, data)
        self.trainer.create_optimizer_and_scheduler(num_training_steps=10**6)
        self.target = self.trainer._target(0)  # module (frozen, eval), graph, channel groups
        self.inputs = {"data_model": torch.tensor([0])}
        self.name, self.macs = name, macs
        self.num_edges, self.num_nodes = graph.num_edges, graph.num_nodes
        self.gnn_params = sum(p.numel() for p in self.metanet.parameters())
        with torch.no_grad():
            tensors = self.trainer.model(self.target.graph).tensors()
        self.leaves = {n: tensors[n].detach().requires_grad_() for n in self.target.param_names}
        with self._k(1):
            self.batch = self.trainer._task_batches(0)[0][0]

    @contextlib.contextmanager
    def _k(self, k: int):
        args = self.trainer.args
        old, args.task_batches_per_step = args.task_batches_per_step, k
        try:
            yield
        finally:
            args.task_batches_per_step = old

    def _optimizer_step(self):
        """What Trainer's inner loop does after ``training_step``."""
        tr = self.trainer
        if tr.args.max_grad_norm:
            tr.accelerator.clip_grad_norm_(tr.model.parameters(), tr.args.max_grad_norm)
        tr.optimizer.step()
        tr.lr_scheduler.step()
        tr.model.zero_grad()
        tr.state.global_step += 1  # the next step draws new task batches, as in training

    def target_fwd_bwd(self) -> None:
        """T: the target's forward+backward on one collated task batch, as in ``_task_gradient``."""
        for leaf in self.leaves.values():
            leaf.grad = None
        logits = functional_call(self.target.module, {**self.leaves, **self.target.buffers},
                                 (self.batch["pixel_values"],))
        F.cross_entropy(logits, self.batch["labels"]).backward()

    def ours(self, k: int) -> float:
        """S_K: one MetaPrunerTrainer step over K task batches (one GNN forward and one GNN backward)."""
        with self._k(k):
            loss = self.trainer.training_step(self.trainer.model, self.inputs)
            self._optimizer_step()
        return float(loss)

    def per_batch(self, step: bool = True) -> float:
        """P: the published formulation on one task batch, backpropagating through the GNN for this batch."""
        tr, target, args = self.trainer, self.target, self.trainer.args
        tr.model.train()
        with self._k(1):
            batch = tr._task_batches(0)[0][0]  # same draw as `ours` at this global_step (collation included)
        tensors = tr.model(target.graph).tensors()
        params = {n: tensors[n] for n in target.param_names}
        logits = functional_call(target.module, {**params, **target.buffers}, (batch["pixel_values"],))
        penalty, _ = sparsity_penalty(target.groups, params, args.sparsity_alpha)
        loss = F.cross_entropy(logits, batch["labels"]) + args.sparsity_lambda * penalty
        loss.backward()
        if step:
            self._optimizer_step()
        return float(loss)

    def check_gradients(self) -> float:
        """Max relative difference between the two formulations' metanetwork gradients on one batch (K = 1)."""
        tr = self.trainer
        with self._k(1):
            tr.training_step(tr.model, self.inputs)
        ours = [p.grad.clone() for p in tr.model.parameters()]
        tr.model.zero_grad()
        self.per_batch(step=False)
        theirs = [p.grad.clone() for p in tr.model.parameters()]
        tr.model.zero_grad()
        num = max(float((a - b).abs().max()) for a, b in zip(ours, theirs))
        den = max(float(b.abs().max()) for b in theirs)
        return num / max(den, 1e-30)


def timed(fn, *args) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["cifar_resnet20", "cifar_resnet56"])
    parser.add_argument("--ks", nargs="+", type=int, default=[1, 8, 32], help="task batches per GNN backward")
    parser.add_argument("--task_batch_size", type=int, default=128)
    parser.add_argument("--hidden_size", type=int, default=None, help="metanetwork width (default: published)")
    parser.add_argument("--num_layers", type=int, default=None, help="metanetwork depth (default: published)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repetitions (median reported)")
    parser.add_argument("--epoch_images", type=int, default=45000,
                        help="task images per epoch (CIFAR-10 train minus 5000 validation)")
    parser.add_argument("--dataset", default=DEFAULT_CIFAR, help="parquet folder of CIFAR-10, or 'random'")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--note", default="", help="free text stored in the JSON (e.g. what else ran on the machine)")
    parser.add_argument("--quick", action="store_true", help="smoke run: ResNet-20, small GNN, K in 1 4")
    parser.add_argument("--out", default=None,
                        help="default results/meta_train_speed.json (--quick: results/tmp/, which git ignores)")
    args = parser.parse_args()
    if args.quick:
        args.models, args.ks, args.repeats = ["cifar_resnet20"], [1, 4], 2
        args.hidden_size, args.num_layers, args.task_batch_size = args.hidden_size or 16, args.num_layers or 2, 32
    if args.out is None:
        args.out = "results/tmp/meta_train_speed_quick.json" if args.quick else "results/meta_train_speed.json"
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    datasets.disable_progress_bars()
    load_start = os.getloadavg()
    start = time.perf_counter()

    data, data_source = load_data(args.dataset, max(args.ks) * args.task_batch_size)
    benches = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            sizes = dict(METANET.get(name, dict(num_layers=8, hidden_size=64)))
            sizes["hidden_size"] = args.hidden_size or sizes["hidden_size"]
            sizes["num_layers"] = args.num_layers or sizes["num_layers"]
            benches[name] = b = Bench(name, data, sizes["hidden_size"], sizes["num_layers"], args.task_batch_size,
                                      os.path.join(tmp, name))
            b.sizes = sizes
            b.grad_check = b.check_gradients()
            print(f"[{name}] {b.num_edges} edges, GNN {sizes['num_layers']}x{sizes['hidden_size']} "
                  f"({b.gnn_params / 1e3:.0f}k params); ours vs per-batch GNN gradient max rel diff "
                  f"{b.grad_check:.1e}", flush=True)
            if not b.grad_check < 1e-3:
                raise AssertionError(f"{name}: the two formulations disagree (rel diff {b.grad_check:.2e})")
            b.target_fwd_bwd(), b.ours(1), b.per_batch()  # warm-up

        # Interleaved: one measurement of every (model, configuration) per repetition.
        configs = ["T", "P"] + [f"S{k}" for k in args.ks]
        times = {name: {c: [] for c in configs} for name in args.models}
        for r in range(args.repeats):
            for name, b in benches.items():
                times[name]["T"].append(timed(b.target_fwd_bwd))
                times[name]["P"].append(timed(b.per_batch))
                for k in args.ks:
                    times[name][f"S{k}"].append(timed(b.ours, k))
            print(f"repetition {r + 1}/{args.repeats} done ({time.perf_counter() - start:.0f}s)", flush=True)

    rows, summaries = [], []
    for name, b in benches.items():
        med = {c: statistics.median(v) for c, v in times[name].items()}
        t, p = med["T"], med["P"]
        n = args.epoch_images // args.task_batch_size
        summaries.append({
            "model": name, "graph_nodes": b.num_nodes, "graph_edges": b.num_edges, "macs_M": round(b.macs / 1e6, 2),
            "metanetwork": b.sizes, "metanetwork_params_k": round(b.gnn_params / 1e3, 1),
            "target_fwd_bwd_s": round(t, 4), "per_batch_step_s": round(p, 4), "gnn_fwd_bwd_est_s": round(p - t, 4),
            "max_speed_up_P_over_T": round(p / t, 2), "grad_rel_diff_ours_vs_per_batch": b.grad_check,
            "epoch_batches": n, "target_only_epoch_s": round(n * t, 1)})
        for k in args.ks:
            s = med[f"S{k}"]
            ours_epoch, per_batch_epoch = math.ceil(n / k) * s, n * p
            rows.append({
                "model": name, "K": k, "step_s": round(s, 4), "K_times_T_s": round(k * t, 4),
                "step_over_KT": round(s / (k * t), 3), "per_batch_K_steps_s": round(k * p, 4),
                "ours_epoch_s": round(ours_epoch, 1), "per_batch_epoch_s": round(per_batch_epoch, 1),
                "epoch_speed_up": round(per_batch_epoch / ours_epoch, 2),
                "meets_step_le_3KT": s <= 3 * k * t, "meets_speed_up_ge_10": per_batch_epoch / ours_epoch >= 10,
                "step_times_s": [round(v, 4) for v in times[name][f"S{k}"]]})
        summaries[-1]["T_times_s"] = [round(v, 4) for v in times[name]["T"]]
        summaries[-1]["P_times_s"] = [round(v, 4) for v in times[name]["P"]]

    cols = ["model", "graph_edges", "metanetwork", "target_fwd_bwd_s", "per_batch_step_s", "gnn_fwd_bwd_est_s",
            "max_speed_up_P_over_T", "target_only_epoch_s"]
    print(f"\nPer model (T: target fwd+bwd, batch {args.task_batch_size}; P: per-batch step; "
          f"epoch = {summaries[0]['epoch_batches']} task batches):\n")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for s in summaries:
        m = s["metanetwork"]
        print("| " + " | ".join(f"{m['num_layers']}x{m['hidden_size']}" if c == "metanetwork" else str(s[c])
                                for c in cols) + " |")
    cols = ["model", "K", "step_s", "K_times_T_s", "step_over_KT", "per_batch_K_steps_s", "ours_epoch_s",
            "per_batch_epoch_s", "epoch_speed_up", "meets_step_le_3KT", "meets_speed_up_ge_10"]
    print("\nPer step (ours: MetaPrunerTrainer step over K task batches):\n")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")

    load_end = os.getloadavg()
    if max(load_start[0], load_end[0]) > args.threads + 0.5:
        print(f"\nwarning: load average {load_start[0]:.1f} -> {load_end[0]:.1f} exceeds {args.threads} threads: "
              "other processes shared the CPU during the run", flush=True)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({
            "device": "cpu", "threads": args.threads, "cpu_count": os.cpu_count(), "versions": hm.library_versions(),
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "note": " ".join(filter(None, ["CPU only, no GPU; medians of interleaved repetitions; per-batch cost "
                                           "for K batches = K x P (each batch is identical work).", args.note])),
            "load_average_1m_start_end": [round(load_start[0], 2), round(load_end[0], 2)],
            "quick": args.quick, "dataset": data_source, "task_batch_size": args.task_batch_size,
            "ks": args.ks, "repeats": args.repeats, "epoch_images": args.epoch_images,
            "optimizer": str(next(iter(benches.values())).trainer.args.optim),
            "max_grad_norm": next(iter(benches.values())).trainer.args.max_grad_norm,
            "wall_s": round(time.perf_counter() - start, 1), "peak_rss_GiB": round(peak_rss_gib(), 2),
            "models": summaries, "rows": rows}, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
