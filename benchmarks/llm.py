"""Decoder LLM pruning, measured: a small Llama-style model with grouped-query attention (default 4 layers, hidden
256, 8 query / 2 key-value heads) trained briefly on a text corpus (the sentences of ../shared/data/sst2), pruned to
each MACs target with each head granularity (whole key/value groups; query heads only) — globally ranked, and
with attention heads alone (a small target: attention is a sixth of the MACs) — then finetuned with the
same budget for every variant (token-level distillation from the unpruned model), beside the unpruned model
finetuned with that same budget (the control: what the finetune alone gives). Reports perplexity (validation:
texts carved from train; test: the corpus's test split) right after pruning and after finetuning, parameters, the
time to prune, and greedy ``generate()`` tokens/s with the KV cache of every model, measured interleaved at the end.
Torch-Pruning's own LLM path (``MetaPruner`` with ``num_heads`` / ``prune_num_heads``) runs on the same model in a
subprocess with a time limit.

    python benchmarks/llm.py          # writes results/llm.{json,md}; every stage cached under outputs/llm

Resumable: the base model and every variant are saved as they finish, and a rerun reuses them.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import torch
import transformers as tf

import hf_metaprune as hm
from hf_metaprune._io import write_json

warnings.filterwarnings("ignore", message=".*(unwrapped|jit.script).*")

TP_SCRIPT = """
import json, sys, time, torch, torch_pruning as tp, transformers as tf
import hf_metaprune as hm
from hf_metaprune.data import LanguageModelingData, TokenBlockDataset
model = tf.AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
ids, blocks = torch.load(sys.argv[2]), torch.load(sys.argv[4])
heads = {}
for layer in model.model.layers:
    a = layer.self_attn
    heads[a.q_proj] = a.q_proj.out_features // a.head_dim
    heads[a.k_proj] = heads[a.v_proj] = a.k_proj.out_features // a.head_dim
start = time.time()
pruner = tp.pruner.MetaPruner(model, {"input_ids": ids}, importance=tp.importance.GroupMagnitudeImportance(p=2),
                              pruning_ratio=float(sys.argv[3]), ignored_layers=[model.lm_head], num_heads=heads,
                              prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=float(sys.argv[3]),
                              output_transform=lambda out: out.logits)
pruner.step()
seconds = time.time() - start
row = {"seconds": seconds, "heads": [], "kv_heads": []}
for layer in model.model.layers:  # Torch-Pruning's LLM example: the attention's head bookkeeping by hand
    a = layer.self_attn
    q, kv = pruner.num_heads[a.q_proj], pruner.num_heads[a.k_proj]
    row["heads"].append(q)
    row["kv_heads"].append(kv)
    a.num_key_value_groups = q // kv
row["macs"], row["params"] = hm.count_macs_and_params(model, {"input_ids": ids[:1]})
validation = TokenBlockDataset(blocks)  # the unpruned rows' perplexity, on the same blocks
try:
    with torch.no_grad():
        row["val_ppl_right_after"] = hm.perplexity(model, LanguageModelingData(validation, validation, None, None))
except Exception as e:  # a query head count its key/value heads do not divide, ...
    row["forward_error"] = f"{type(e).__name__}: {str(e)[:200]}"
print(json.dumps(row))
"""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", default="../shared/data/sst2", help="text corpus: local folder / parquet or Hub id")
    p.add_argument("--max_train_samples", type=int, default=None, help="first N training texts")
    p.add_argument("--block_size", type=int, default=64)
    p.add_argument("--vocab_size", type=int, default=4000)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden_size", type=int, default=256)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv_heads", type=int, default=2)
    p.add_argument("--intermediate_size", type=int, default=704)
    p.add_argument("--base_epochs", type=float, default=2.0)
    p.add_argument("--finetune_epochs", type=float, default=0.5, help="the same for every pruned variant")
    p.add_argument("--learning_rate", type=float, default=2e-3)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--speed_ups", type=float, nargs="+", default=[1.5, 2.0])
    p.add_argument("--granularities", nargs="+", default=["kv_group", "query"], choices=["kv_group", "query"])
    p.add_argument("--head_only_speed_ups", type=float, nargs="*", default=[1.05], help=(
        "targets reached by removing attention heads alone (MLP neurons kept), per granularity: at the --speed_ups "
        "the global ranking removes MLP neurons first, so these rows are where the granularities differ"))
    p.add_argument("--no_control", action="store_true", help="skip the unpruned model finetuned with the same budget "
                   "(the control that tells pruning's cost from the finetune's gain)")
    p.add_argument("--generate_tokens", type=int, default=32)
    p.add_argument("--tp_timeout", type=float, default=120.0, help="seconds Torch-Pruning's own path may take")
    p.add_argument("--output_dir", default="outputs/llm")
    p.add_argument("--results_dir", default="results")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for training (CPUs with AMX)")
    return p.parse_args(argv)


def log(message: str) -> None:
    print(f"[llm {time.strftime('%H:%M:%S')}] {message}", flush=True)


@torch.inference_mode()
def generate_speeds(models: dict, prompts: torch.Tensor, new_tokens: int, rounds: int = 3) -> dict[str, float]:
    """Greedy tokens per second with the (dynamic) KV cache, one prompt at a time, every model in turn for each
    prompt (interleaved, so they share the machine's noise), median over ``rounds``."""
    for model in models.values():
        model.eval().generate(prompts[:1], max_new_tokens=4, do_sample=False)  # warm-up
    rates: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for p in prompts:
            for name, model in models.items():
                start = time.perf_counter()
                out = model.generate(p[None], max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
                rates[name].append((out.shape[1] - p.numel()) / (time.perf_counter() - start))
    return {name: statistics.median(r) for name, r in rates.items()}


def measure(model, data) -> dict:
    macs, params = hm.count_macs_and_params(model, data.example_inputs(1))
    return {"val_ppl": hm.perplexity(model, data, "validation"), "test_ppl": hm.perplexity(model, data, "test"),
            "macs": macs, "params": params}


def torch_pruning_llm(base_dir: str, ids: torch.Tensor, blocks: torch.Tensor, base_macs: float, ratio: float,
                      timeout: float) -> dict:
    """Torch-Pruning's own LLM pruning on the same model, in a subprocess (its group search may not end): its time,
    MACs, head counts and perplexity right after pruning on ``blocks``, or why it did not get there."""
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(ids, os.path.join(tmp, "ids.pt"))
        torch.save(blocks, os.path.join(tmp, "blocks.pt"))
        start = time.time()
        try:
            out = subprocess.run([sys.executable, "-c", TP_SCRIPT, base_dir, os.path.join(tmp, "ids.pt"), str(ratio),
                                  os.path.join(tmp, "blocks.pt")], capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"status": f"did not finish in {timeout:g} s", "seconds": time.time() - start}
    if out.returncode:
        return {"status": f"failed: {out.stderr.strip().splitlines()[-1][:200]}", "seconds": time.time() - start}
    row = json.loads(out.stdout.strip().splitlines()[-1])
    if "forward_error" in row:
        status = f"pruned in {row['seconds']:.1f} s, but its model does not run: {row['forward_error']}"
    else:
        status = (f"pruned in {row['seconds']:.1f} s to {base_macs / row['macs']:.2f}x MACs, heads {row['heads']} / "
                  f"key-value heads {row['kv_heads']}; validation perplexity right after "
                  f"{row['val_ppl_right_after']:.1f} (on the validation blocks below)")
    return {"status": status, **row}


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(torch.get_num_threads())
    data = hm.load_text_corpus(args.dataset, block_size=args.block_size, vocab_size=args.vocab_size,
                               max_train_samples=args.max_train_samples)
    tok = data.tokenizer
    log(f"{args.dataset}: {data.train.num_tokens} training / {data.validation.num_tokens} validation / "
        f"{data.test.num_tokens} test tokens, vocabulary {len(tok)}")
    train = dict(batch_size=args.batch_size, learning_rate=args.learning_rate, bf16=args.bf16, disable_tqdm=True,
                 use_cpu=not torch.cuda.is_available())
    base_dir = os.path.join(args.output_dir, "base")
    if os.path.isfile(os.path.join(base_dir, "config.json")):
        base = tf.AutoModelForCausalLM.from_pretrained(base_dir).eval()
        log(f"base model reused from {base_dir}")
    else:
        torch.manual_seed(0)
        config = tf.LlamaConfig(vocab_size=len(tok), hidden_size=args.hidden_size, num_hidden_layers=args.layers,
                                num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
                                intermediate_size=args.intermediate_size, max_position_embeddings=4 * args.block_size,
                                pad_token_id=tok.pad_token_id, bos_token_id=tok.cls_token_id,
                                eos_token_id=tok.sep_token_id, tie_word_embeddings=False)
        start = time.time()
        base = hm.finetune_causal_lm(tf.LlamaForCausalLM(config), data, os.path.join(args.output_dir, "base-run"),
                                     epochs=args.base_epochs, **train).model
        base.save_pretrained(base_dir)
        tok.save_pretrained(base_dir)
        log(f"base model trained in {time.time() - start:.0f} s")
    prompts = data.validation.blocks[:8, :16]
    rows = [{"model": "unpruned", **measure(base, data)}]
    log(f"unpruned: {rows[0]}")
    inputs = data.example_inputs(4)
    variants = [] if args.no_control else [("control", None, False)]
    variants += [(g, s, False) for g in args.granularities for s in args.speed_ups]
    variants += [(g, s, True) for g in args.granularities for s in args.head_only_speed_ups]
    mlps = [m for n, m in base.named_modules() if n.endswith(".mlp")]
    for granularity, speed_up, heads_only in variants:
        name = ("unpruned, finetuned" if speed_up is None else
                f"{granularity}-{'heads-only-' if heads_only else ''}{speed_up:g}x")
        folder = "unpruned-finetuned" if speed_up is None else name
        record_path = os.path.join(args.output_dir, folder, "record.json")
        if os.path.isfile(record_path):
            with open(record_path) as f:
                rows.append(json.load(f))
            continue
        start = time.time()
        if speed_up is None:  # the same finetuning budget, no pruning: what the finetune alone gives
            model, teacher = copy.deepcopy(base).train(), None
            heads, kv = [args.heads] * args.layers, [args.kv_heads] * args.layers
        else:
            model = hm.prune_to_speedup(base, inputs, speed_up, head_granularity=granularity,
                                        ignored_layers=mlps if heads_only else None).model
            teacher = base
            heads = list(model.config.pruned_attention_heads.values())
            kv = list(model.config.pruned_key_value_heads.values())
        seconds = time.time() - start
        pruned = measure(model, data)
        tuned = hm.finetune_causal_lm(model, data, os.path.join(args.output_dir, folder, "run"),
                                      epochs=args.finetune_epochs, teacher=teacher, **train).model
        after = measure(tuned, data)
        record = {"model": name, "granularity": granularity, "target": speed_up or 1.0,
                  "speed_up": rows[0]["macs"] / pruned["macs"], "prune_seconds": seconds if speed_up else 0.0,
                  "heads": heads, "kv_heads": kv, "pruned": pruned, **after}
        tuned.save_pretrained(os.path.join(args.output_dir, folder, "model"))
        write_json(record_path, record)
        rows.append(record)
        log(f"{name}: {record}")
    folders = {r["model"]: "unpruned-finetuned" if r["model"] == "unpruned, finetuned" else r["model"]
               for r in rows[1:]}
    models = {"unpruned": base, **{name: tf.AutoModelForCausalLM.from_pretrained(
        os.path.join(args.output_dir, folder, "model")) for name, folder in folders.items()}}
    speeds = generate_speeds(models, prompts, args.generate_tokens)  # side by side, after every training run
    for r in rows:
        r["tokens_per_s"] = speeds[r["model"]]
    ratio = 1 - 1 / min(args.speed_ups)
    tp_row = torch_pruning_llm(base_dir, inputs["input_ids"], data.validation.blocks, rows[0]["macs"], ratio,
                               args.tp_timeout)
    log(f"Torch-Pruning's LLM path (pruning_ratio {ratio:.2f}): {tp_row}")
    return report(rows, tp_row, ratio, args)


def report(rows: list[dict], tp_row: dict, ratio: float, args) -> dict:
    base = rows[0]
    lines = ["| model | MACs speed-up | params | heads (query / kv per layer) | prune s | val ppl right after | "
             "val ppl finetuned | test ppl finetuned | generate tok/s (ratio) |", "|" + "---|" * 9]
    lines.append(f"| unpruned | 1.00x | {base['params'] / 1e6:.2f}M | {args.heads} / {args.kv_heads} | - | - | "
                 f"{base['val_ppl']:.1f} | {base['test_ppl']:.1f} | {base['tokens_per_s']:.0f} (1.00x) |")
    for r in rows[1:]:
        lines.append(f"| {r['model']} | {r['speed_up']:.2f}x | {r['params'] / 1e6:.2f}M | {r['heads']} / "
                     f"{r['kv_heads']} | {r['prune_seconds']:.1f} | {r['pruned']['val_ppl']:.1f} | "
                     f"{r['val_ppl']:.1f} | {r['test_ppl']:.1f} | {r['tokens_per_s']:.0f} "
                     f"({r['tokens_per_s'] / base['tokens_per_s']:.2f}x) |")
    table = "\n".join(lines)
    tp_line = f"Torch-Pruning's own LLM path (MetaPruner, num_heads, pruning_ratio {ratio:.2f}): {tp_row['status']}"
    summary = {"table": table, "torch_pruning": {**tp_row, "pruning_ratio": ratio}, "rows": rows,
               "arguments": vars(args), "versions": hm.library_versions()}
    os.makedirs(args.results_dir, exist_ok=True)
    with open(os.path.join(args.results_dir, "llm.json"), "w") as f:
        json.dump(summary, f, indent=2)
    with open(os.path.join(args.results_dir, "llm.md"), "w") as f:
        f.write(f"# Decoder LLM pruning\n\n`python benchmarks/llm.py {' '.join(sys.argv[1:])}`\n\n{table}\n\n"
                f"{tp_line} ({tp_row['seconds']:.0f} s).\n")
    print(table)
    print(tp_line)
    return summary


if __name__ == "__main__":
    main()
