"""Pruned 🤗 models of any family reload in a new process through the Auto classes after ``import hf_metaprune``,
without ``trust_remote_code``, with identical logits — including DeiT, whose image-classification Auto mapping holds
two classes, DistilBERT (its own attribute names) and MobileViT (depthwise convolutions)."""
from __future__ import annotations

import os
import subprocess
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import (AlbertConfig, AlbertForSequenceClassification, BeitConfig, BeitForImageClassification,
                          ConvNextConfig, ConvNextForImageClassification, DeiTConfig, DeiTForImageClassification,
                          DeiTForImageClassificationWithTeacher, Dinov2Config, Dinov2ForImageClassification,
                          DistilBertConfig, DistilBertForSequenceClassification, ElectraConfig,
                          ElectraForSequenceClassification, MobileViTConfig, MobileViTForImageClassification,
                          ResNetConfig, ResNetForImageClassification, RobertaConfig, RobertaForSequenceClassification,
                          XLMRobertaConfig, XLMRobertaForSequenceClassification)

import hf_metaprune as hm

TEXT = dict(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
            max_position_embeddings=64, num_labels=3)
VISION = dict(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=128, num_labels=3)
TEXT_AUTO, IMAGE_AUTO = "AutoModelForSequenceClassification", "AutoModelForImageClassification"
CASES = {  # name: (model, Auto class that must load it, input kind)
    "xlm_roberta": (lambda: XLMRobertaForSequenceClassification(XLMRobertaConfig(**TEXT)), TEXT_AUTO, "text"),
    # heads named n_heads, projections q_lin / k_lin / v_lin
    "distilbert": (lambda: DistilBertForSequenceClassification(DistilBertConfig(
        vocab_size=100, dim=64, n_layers=2, n_heads=4, hidden_dim=128, max_position_embeddings=64, num_labels=3)),
        TEXT_AUTO, "text"),
    "albert": (lambda: AlbertForSequenceClassification(AlbertConfig(embedding_size=32, **TEXT)), TEXT_AUTO, "text"),
    "beit": (lambda: BeitForImageClassification(BeitConfig(**VISION)), IMAGE_AUTO, "image"),
    "dinov2": (lambda: Dinov2ForImageClassification(Dinov2Config(
        image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2,
        num_labels=3)), IMAGE_AUTO, "image"),
    "mobilevit": (lambda: MobileViTForImageClassification(MobileViTConfig(
        image_size=32, hidden_sizes=[32, 48, 64], neck_hidden_sizes=[8, 16, 24, 32, 48, 64, 80], num_attention_heads=4,
        num_labels=3)), IMAGE_AUTO, "image"),
    "roberta": (lambda: RobertaForSequenceClassification(RobertaConfig(**TEXT)), "AutoModelForSequenceClassification",
                "text"),
    "electra": (lambda: ElectraForSequenceClassification(ElectraConfig(embedding_size=64, **TEXT)),
                "AutoModelForSequenceClassification", "text"),
    "deit": (lambda: DeiTForImageClassification(DeiTConfig(**VISION)), "AutoModelForImageClassification", "image"),
    "deit_teacher": (lambda: DeiTForImageClassificationWithTeacher(DeiTConfig(**VISION)),
                     "AutoModelForImageClassification", "image"),
    "convnext": (lambda: ConvNextForImageClassification(ConvNextConfig(hidden_sizes=[16, 32], depths=[1, 1],
                                                                       num_stages=2, num_labels=3)),
                 "AutoModelForImageClassification", "image"),
    "resnet": (lambda: ResNetForImageClassification(ResNetConfig(hidden_sizes=[16, 32], depths=[1, 1],
                                                                 embedding_size=16, num_labels=3)),
               "AutoModelForImageClassification", "image"),
}
RELOAD = """
import sys, torch, transformers
import hf_metaprune  # noqa: F401  (nothing else: the folder's config must be enough)
from safetensors.torch import load_file, save_file
root, cases = sys.argv[1], sys.argv[2:]
out = {}
for case in cases:
    name, auto = case.split(":")
    model = getattr(transformers, auto).from_pretrained(f"{root}/{name}").eval()
    x = load_file(f"{root}/{name}-inputs.safetensors")["x"]
    with torch.no_grad():
        logits = model(input_ids=x).logits if x.dtype == torch.long else model(pixel_values=x).logits
    out[name] = logits.contiguous()
    out[name + "-class"] = torch.tensor([ord(c) for c in type(model).__name__])
save_file(out, f"{root}/reloaded.safetensors")
"""


def test_pruned_models_of_every_family_reload_in_a_new_process(tmp_path):
    expected, classes, args = {}, {}, []
    for name, (build, auto, kind) in CASES.items():
        torch.manual_seed(0)
        model = build().eval()
        x = torch.randint(3, 100, (2, 12)) if kind == "text" else torch.randn(2, 3, 32, 32)
        example = {"input_ids": x[:1]} if kind == "text" else x[:1]
        result = hm.prune_to_speedup(model, example, 1.5)
        assert result.speed_up >= 1.5, name
        pruned = result.model.eval()
        classes[name] = type(pruned).__name__
        assert classes[name] == f"MetaPruned{type(model).__name__}"
        pruned.save_pretrained(tmp_path / name)
        assert "auto_map" in (tmp_path / name / "config.json").read_text()  # trust_remote_code keeps working too
        save_file({"x": x}, str(tmp_path / f"{name}-inputs.safetensors"))
        with torch.no_grad():
            expected[name] = (pruned(input_ids=x) if kind == "text" else pruned(pixel_values=x)).logits
        args.append(f"{name}:{auto}")
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-c", RELOAD, str(tmp_path), *args], capture_output=True, text=True,
                          env=env, timeout=600, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 0, proc.stderr[-3000:]
    reloaded = load_file(str(tmp_path / "reloaded.safetensors"))
    for name, logits in expected.items():
        assert "".join(map(chr, reloaded[name + "-class"].tolist())) == classes[name]
        torch.testing.assert_close(reloaded[name], logits, msg=lambda m: f"{name}: {m}")
