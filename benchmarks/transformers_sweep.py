"""Which transformers hf_metaprune supports, measured: tiny configs of every common 🤗 encoder family, the 🤗 decoder
LLMs (as sequence classifiers) and timm's vision transformers, each traced to a graph (bit-exact round trip, every parameter covered), pruned head-aware to
1.5x and 2x MACs (for models with heads, the logits checked against the unpruned model with the removed heads and
neurons zeroed), saved, and reloaded in a new process (identical logits) — or refused with an
``UnsupportedModuleError`` naming the module (by the graph only: then it prunes with DepGraph's criterion but no
metanetwork can read it; or by both). The README's supported-models table is this script's output.

    python benchmarks/transformers_sweep.py      # writes results/transformers_sweep.{json,md}

tests/test_transformers_sweep.py runs the same sweep and checks every row.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from typing import Callable

import timm
import torch
import transformers as tf
from safetensors.torch import load_file, save_file

import hf_metaprune as hm
from hf_metaprune.training import classifier_logits

warnings.filterwarnings("ignore", message=".*(unwrapped|jit.script).*")

TEXT = dict(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
            max_position_embeddings=64, num_labels=3)
DECODER = dict(TEXT, num_key_value_heads=2, pad_token_id=0)
VISION = dict(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=128, num_labels=3)
TIMM_VIT = dict(img_size=32, patch_size=8, depth=2, embed_dim=64, num_heads=4, mlp_ratio=2.0)
TIMM_SWIN = dict(img_size=32, patch_size=2, window_size=4, embed_dim=16, depths=(1, 1), num_heads=(2, 4))


def _hf(model_class: str, config_class: str, **config) -> Callable[[], torch.nn.Module]:
    return lambda: getattr(tf, model_class)(getattr(tf, config_class)(**config))


def _timm(name: str, **kwargs) -> Callable[[], torch.nn.Module]:
    return lambda: timm.create_model(name, pretrained=False, num_classes=3, **kwargs)


# name: (builder, input kind, library); what each family exercises is in its comment
CASES: dict[str, tuple[Callable[[], torch.nn.Module], str, str]] = {
    "ViT": (_hf("ViTForImageClassification", "ViTConfig", **VISION), "image", "🤗"),
    "DeiT": (_hf("DeiTForImageClassification", "DeiTConfig", **VISION), "image", "🤗"),
    # two heads share one config: the Auto mapping holds a tuple
    "DeiT with teacher": (_hf("DeiTForImageClassificationWithTeacher", "DeiTConfig", **VISION), "image", "🤗"),
    "BEiT": (_hf("BeitForImageClassification", "BeitConfig", **VISION), "image", "🤗"),
    # a [positions, heads] table per layer, pruned with its heads
    "BEiT, relative position bias": (_hf("BeitForImageClassification", "BeitConfig", use_relative_position_bias=True,
                                         **VISION), "image", "🤗"),
    "BEiT, shared relative position bias": (_hf("BeitForImageClassification", "BeitConfig",
                                                use_shared_relative_position_bias=True, **VISION), "image", "🤗"),
    # mask token (unused in a plain forward), layer scale, a classifier reading [class token, patch mean]
    "Dinov2": (_hf("Dinov2ForImageClassification", "Dinov2Config", image_size=32, patch_size=8, hidden_size=64,
                   num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2, num_labels=3), "image", "🤗"),
    # register tokens beside the class token
    "Dinov2 with registers": (_hf("Dinov2WithRegistersForImageClassification", "Dinov2WithRegistersConfig",
                                  image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2,
                                  num_attention_heads=4, mlp_ratio=2, num_register_tokens=2, num_labels=3),
                              "image", "🤗"),
    "Swin": (_hf("SwinForImageClassification", "SwinConfig", image_size=32, patch_size=4, embed_dim=16,
                 depths=[1, 1], num_heads=[2, 4], window_size=4, num_labels=3), "image", "🤗"),
    "ConvNeXt": (_hf("ConvNextForImageClassification", "ConvNextConfig", hidden_sizes=[16, 32], depths=[1, 1],
                     num_stages=2, num_labels=3), "image", "🤗"),
    "ResNet": (_hf("ResNetForImageClassification", "ResNetConfig", hidden_sizes=[16, 32], depths=[1, 1],
                   embedding_size=16, num_labels=3), "image", "🤗"),
    # depthwise convolutions beside attention
    "MobileViT": (_hf("MobileViTForImageClassification", "MobileViTConfig", image_size=32, hidden_sizes=[32, 48, 64],
                      neck_hidden_sizes=[8, 16, 24, 32, 48, 64, 80], num_attention_heads=4, num_labels=3),
                  "image", "🤗"),
    "BERT": (_hf("BertForSequenceClassification", "BertConfig", **TEXT), "text", "🤗"),
    "RoBERTa": (_hf("RobertaForSequenceClassification", "RobertaConfig", **TEXT), "text", "🤗"),
    "XLM-RoBERTa": (_hf("XLMRobertaForSequenceClassification", "XLMRobertaConfig", **TEXT), "text", "🤗"),
    # n_heads, q_lin / k_lin / v_lin
    "DistilBERT": (_hf("DistilBertForSequenceClassification", "DistilBertConfig", vocab_size=100, dim=64, n_layers=2,
                       n_heads=4, hidden_dim=128, max_position_embeddings=64, num_labels=3), "text", "🤗"),
    "ELECTRA": (_hf("ElectraForSequenceClassification", "ElectraConfig", embedding_size=32, **TEXT), "text", "🤗"),
    # q / k / v / o under names the library does not list (found by structure); MPNet adds a per-head relative
    # position bias computed once in the encoder
    "DeBERTa-v2": (_hf("DebertaV2ForSequenceClassification", "DebertaV2Config", **TEXT), "text", "🤗"),
    "MPNet": (_hf("MPNetForSequenceClassification", "MPNetConfig", **TEXT), "text", "🤗"),
    # DeBERTa-v3's disentangled attention: relative position embeddings through the shared key / query projections
    "DeBERTa-v3 (relative, shared keys)": (_hf("DebertaV2ForSequenceClassification", "DebertaV2Config",
                                                relative_attention=True, pos_att_type=["p2c", "c2p"],
                                                max_relative_positions=16, share_att_key=True, position_buckets=8,
                                                norm_rel_ebd="layer_norm", **TEXT), "text", "🤗"),
    # a factorised embedding and one layer shared by every pass
    "ALBERT": (_hf("AlbertForSequenceClassification", "AlbertConfig", embedding_size=32, **TEXT), "text", "🤗"),
    # decoders: causal, rotary, grouped-query attention (4 query / 2 key-value heads), pruned in key/value groups;
    # no head count on the module (read off the query width); in the graph: query/key and value/output node sets
    # of KV·d channels per layer
    "Llama": (_hf("LlamaForSequenceClassification", "LlamaConfig", **DECODER), "text", "🤗"),
    "Qwen2": (_hf("Qwen2ForSequenceClassification", "Qwen2Config", **DECODER), "text", "🤗"),
    "Mistral": (_hf("MistralForSequenceClassification", "MistralConfig", **DECODER), "text", "🤗"),
    "Phi": (_hf("PhiForSequenceClassification", "PhiConfig", partial_rotary_factor=0.5, **DECODER), "text", "🤗"),
    # q/k/v fused in a Conv1D
    "GPT-2": (_hf("GPT2ForSequenceClassification", "GPT2Config", vocab_size=100, n_embd=64, n_layer=2, n_head=4,
                  n_positions=64, num_labels=3, pad_token_id=0), "text", "🤗"),
    # fused qkv
    "vit_tiny_patch16_224": (_timm("vit_tiny_patch16_224", **TIMM_VIT), "image", "timm"),
    "deit_tiny_patch16_224": (_timm("deit_tiny_patch16_224", **TIMM_VIT), "image", "timm"),
    "deit_tiny_distilled_patch16_224": (_timm("deit_tiny_distilled_patch16_224", **TIMM_VIT), "image", "timm"),
    "swin_tiny_patch4_window7_224": (_timm("swin_tiny_patch4_window7_224", **TIMM_SWIN), "image", "timm"),
}
TIMM_KWARGS = {"swin_tiny_patch4_window7_224": TIMM_SWIN}

RELOAD = """
import sys, torch, transformers
import hf_metaprune as hm  # nothing else: the folder must be enough
from hf_metaprune.training import classifier_logits
from safetensors.torch import load_file, save_file
root, cases = sys.argv[1], sys.argv[2:]
out = {}
for case in cases:
    folder, library = case.split(":")
    if library == "timm":
        model = hm.load_pruned(f"{root}/{folder}")
    else:
        auto = "AutoModelForSequenceClassification" if folder.startswith("text") else "AutoModelForImageClassification"
        model = getattr(transformers, auto).from_pretrained(f"{root}/{folder}").eval()
    x = load_file(f"{root}/{folder}-inputs.safetensors")["x"]
    with torch.no_grad():
        out[folder] = classifier_logits(model, {"input_ids" if x.dtype == torch.long else "pixel_values": x})
    out[folder] = out[folder].contiguous()
save_file(out, f"{root}/reloaded.safetensors")
"""


def _inputs(kind: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(3, 100, (2, 12), generator=g) if kind == "text" else torch.randn(2, 3, 32, 32, generator=g)


def _logits(model: torch.nn.Module, x: torch.Tensor, params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Logits of a 🤗 (keyword inputs) or timm (positional input) classifier, with ``params`` swapped in if given."""
    with torch.no_grad():
        return classifier_logits(model, {"input_ids" if x.dtype == torch.long else "pixel_values": x}, params)


def _heads(model: torch.nn.Module) -> int:
    return sum(a.num_heads for a in hm.pruning.find_attention_modules(model))


def kept_units(groups: hm.ChannelGroups, model: torch.nn.Module, pruned: torch.nn.Module) -> torch.Tensor:
    """Which pruning units of ``model`` survive in ``pruned`` (1/0 per unit), read off the weights: a unit is kept
    when its output rows are among the pruned layer's rows."""
    keep = torch.zeros(groups.num_units)
    before, after = dict(model.named_parameters()), dict(pruned.named_parameters())
    seen = torch.zeros(groups.num_units, dtype=torch.bool)
    for s in groups.slices:
        if s.dim != 0 or s.is_bias or before[s.param].dim() < 2:
            continue
        rows = {r.numpy().tobytes() for r in after[s.param].detach().reshape(after[s.param].shape[0], -1)}
        original = before[s.param].detach().reshape(before[s.param].shape[0], -1)
        for i, u in zip(s.index.tolist(), s.unit.tolist()):
            if not seen[u]:
                keep[u] = float(original[i].numpy().tobytes() in rows)
        seen[s.unit] = True
    return keep


def masked_logits(model: torch.nn.Module, pruned: torch.nn.Module, example, x: torch.Tensor) -> torch.Tensor:
    """The unpruned model with every unit the pruned one lost zeroed (``ChannelGroups.apply_mask``)."""
    groups = hm.ChannelGroups.from_model(model, example)
    return _logits(model, x, groups.apply_mask(dict(model.named_parameters()), kept_units(groups, model, pruned)))


def check(name: str, root: str) -> dict:
    """One family: round trip, prune to 1.5x and 2x, save the 2x model under ``root`` for the reload."""
    build, kind, library = CASES[name]
    torch.manual_seed(0)
    model = build().eval()
    x = _inputs(kind)
    example = {"input_ids": x[:1]} if kind == "text" and library != "timm" else x[:1]
    row = {"model": name, "library": library, "status": "supported"}
    start = time.perf_counter()
    try:  # the graph (what the metanetwork reads)
        graph = hm.model_to_graph(model, example)
        torch.manual_seed(1)
        rebuilt = hm.graph_to_model(graph, build().eval())
        row["round_trip"] = all(torch.equal(v, model.state_dict()[k]) for k, v in rebuilt.state_dict().items()) \
            and torch.equal(_logits(rebuilt, x), _logits(model, x))
        row["coverage"] = graph.num_covered_parameters == sum(p.numel() for p in model.parameters())
        row["graph_nodes"] = graph.num_nodes
    except hm.UnsupportedModuleError as e:
        row.update(status="pruning only", graph_module=e.path, graph_reason=str(e))
    try:  # head-aware pruning (DepGraph's criterion) and the reload
        row["heads"] = _heads(model)
        for speed_up in (1.5, 2.0):
            result = hm.prune_to_speedup(model, example, speed_up)
            row[f"speed_up_{speed_up:g}x"] = round(result.speed_up, 4)
            row[f"heads_{speed_up:g}x"] = _heads(result.model)
            row[f"note_{speed_up:g}x"] = result.note
            if row["heads"]:  # heads and MLP neurons only: zeroing them is removing them (not so for the channels
                # of a normalised residual stream, which CNNs prune too)
                diff = masked_logits(model, result.model, example, x) - _logits(result.model, x)
                row[f"masked_reference_max_diff_{speed_up:g}x"] = float(diff.abs().max())
        folder = f"{kind}-{len(os.listdir(root))}"
        if library == "timm":
            hm.save_pruned(result.model, os.path.join(root, folder), model_kwargs=TIMM_KWARGS.get(name, TIMM_VIT))
        else:
            result.model.save_pretrained(os.path.join(root, folder))
            row["pruned_class"] = type(result.model).__name__
            with open(os.path.join(root, folder, "config.json")) as f:
                row["auto_map"] = "auto_map" in json.load(f)  # trust_remote_code keeps working too
        save_file({"x": x}, os.path.join(root, f"{folder}-inputs.safetensors"))
        row["folder"], row["expected"] = f"{folder}:{library}", _logits(result.model, x)
    except hm.UnsupportedModuleError as e:
        row.update(status="refused", module=e.path, reason=str(e))
    row["seconds"] = round(time.perf_counter() - start, 2)
    return row


def sweep(names: list[str] | None = None) -> list[dict]:
    """Every family in ``names`` (default: all), then one new process reloading every pruned model."""
    rows = []
    with tempfile.TemporaryDirectory() as root:
        rows = [check(name, root) for name in names or list(CASES)]
        folders = [r["folder"] for r in rows if "folder" in r]
        env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
        proc = subprocess.run([sys.executable, "-c", RELOAD, root, *folders], capture_output=True, text=True,
                              env=env, timeout=900)
        reloaded = load_file(os.path.join(root, "reloaded.safetensors")) if proc.returncode == 0 else {}
    for r in rows:
        if "folder" in r:
            folder = r.pop("folder").split(":")[0]
            expected = r.pop("expected")
            r["reload_identical"] = folder in reloaded and torch.equal(reloaded[folder], expected)
            if folder not in reloaded:
                r["reload_error"] = proc.stderr[-2000:]
    return rows


def markdown(rows: list[dict]) -> str:
    yes = lambda v: "✓" if v else "✗"  # noqa: E731
    lines = ["| model | library | graph: round trip (bit-exact, all parameters) | prune 1.5× | prune 2× | "
             "heads at 2× | = masked reference | reload in a new process |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["status"] == "refused":
            lines.append(f"| {r['model']} | {r['library']} | refused: `UnsupportedModuleError` on `{r['module']}` "
                         "| – | – | – | – | – |")
            continue
        graph = yes(r["round_trip"] and r["coverage"]) if "round_trip" in r else \
            f"refused (`{r['graph_module']}`): prunable, no metanetwork"
        diffs = [r[k] for k in ("masked_reference_max_diff_1.5x", "masked_reference_max_diff_2x") if k in r]
        masked = f"{yes(max(diffs) < 1e-5)} (max diff {max(diffs):.0e})" if diffs else "–"
        lines.append(f"| {r['model']} | {r['library']} | {graph} | {r['speed_up_1.5x']:.3f}× | "
                     f"{r['speed_up_2x']:.3f}× | {r['heads']} → {r['heads_2x']} | {masked} | "
                     f"{yes(r['reload_identical'])} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="results/transformers_sweep")
    args = parser.parse_args()
    rows = sweep()
    table = markdown(rows)
    print(table)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(f"{args.out}.json", "w") as f:
        json.dump({"rows": rows, "versions": hm.library_versions()}, f, indent=2)
    with open(f"{args.out}.md", "w") as f:
        f.write(table + "\n")
    print(f"wrote {args.out}.json, .md")


if __name__ == "__main__":
    main()
