"""Head-aware structured pruning of 🤗 ViT / BERT / DistilBERT, pruned models that reload with from_pretrained, bad
input."""
import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn
from transformers import (AutoModelForImageClassification, AutoModelForSequenceClassification, BertConfig,
                          BertForSequenceClassification, DistilBertConfig, DistilBertForSequenceClassification,
                          ViTConfig, ViTForImageClassification)

import hf_metaprune as hm
from hf_metaprune.pruning import find_attention_modules


def tiny_vit(seed: int = 0) -> ViTForImageClassification:
    torch.manual_seed(seed)
    config = ViTConfig(image_size=32, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=64, num_labels=10)
    return ViTForImageClassification(config).eval()


def tiny_bert(seed: int = 0, **overrides) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, num_labels=3, **overrides)
    return BertForSequenceClassification(config).eval()


def tiny_distilbert(seed: int = 0) -> DistilBertForSequenceClassification:
    """Its own spellings: ``n_heads``, ``q_lin`` / ``k_lin`` / ``v_lin`` / ``out_lin``, ``ffn.lin1`` / ``ffn.lin2``."""
    torch.manual_seed(seed)
    config = DistilBertConfig(vocab_size=100, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                              max_position_embeddings=64, num_labels=3)
    return DistilBertForSequenceClassification(config).eval()


VIT_INPUT = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
BERT_INPUT = {"input_ids": torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(1)),
              "attention_mask": torch.tensor([[1] * 12, [1] * 9 + [0] * 3])}


def logits(model, x):
    with torch.no_grad():
        return (model(**x) if isinstance(x, dict) else model(x)).logits


def kept_rows(original: torch.Tensor, pruned: torch.Tensor, unit: int) -> list[int]:
    """Indices of the ``unit``-row blocks of ``original`` that survive in ``pruned`` (in order)."""
    blocks = original.split(unit)
    kept = [next(i for i, b in enumerate(blocks) if torch.equal(b, p)) for p in pruned.split(unit)]
    assert kept == sorted(kept)
    return kept


def masked_reference(original: nn.Module, pruned: nn.Module) -> nn.Module:
    """The unpruned model with every removed head and MLP neuron zeroed where it enters the residual stream."""
    reference = original.__class__(original.config).eval()
    reference.load_state_dict(original.state_dict())
    out_proj = {}  # the Linear consuming each attention module's output: o_proj (ViT) / output.dense (BERT)
    for name, m in reference.named_modules():
        if name.endswith(("attention.o_proj", "attention.out_lin", "attention.output.dense")):
            out_proj[name.rsplit(".", 2 if name.endswith("output.dense") else 1)[0]] = m
    pruned_attention = {a.path: a for a in find_attention_modules(pruned)}
    for a in find_attention_modules(reference):
        p = pruned_attention[a.path]
        heads = kept_rows(a.projections[0].weight, p.projections[0].weight, a.head_dim)
        owner = a.path if a.path in out_proj else a.path.rsplit(".", 1)[0]
        mask = torch.zeros(a.num_heads, a.head_dim)
        mask[heads] = 1
        out_proj[owner].weight.data *= mask.reshape(1, -1)
    widths = hm.pruning.module_widths(original)
    for name, m in reference.named_modules():  # MLP: first layer's kept rows, zero the second layer's columns
        if isinstance(m, nn.Linear) and name in widths and name.endswith(("mlp.fc1", "intermediate.dense", "ffn.lin1")):
            kept = kept_rows(m.weight, pruned.get_submodule(name).weight, 1)
            second = reference.get_submodule(name.replace("mlp.fc1", "mlp.fc2").replace("ffn.lin1", "ffn.lin2").replace(
                "intermediate.dense", "output.dense").replace("attention.output", "output"))
            mask = torch.zeros(m.out_features)
            mask[kept] = 1
            second.weight.data *= mask
    return reference


@pytest.mark.parametrize("make, x", [(tiny_vit, VIT_INPUT), (tiny_bert, BERT_INPUT), (tiny_distilbert, BERT_INPUT)],
                         ids=["vit", "bert", "distilbert"])
def test_prune_removes_whole_heads_and_matches_reference(make, x):
    model = make()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = hm.prune_to_speedup(model, x, 2.0)
    pruned = result.model
    assert 2.0 <= result.speed_up <= 2.0 * 1.011
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # input untouched
    attention = find_attention_modules(pruned)
    counts = pruned.config.pruned_attention_heads
    assert len(attention) == 2 and set(counts) == {a.path for a in attention}
    for a in attention:
        q, k, v = a.projections
        assert q.out_features == k.out_features == v.out_features == a.num_heads * a.head_dim
        assert counts[a.path] == a.num_heads >= 1
        heads_attr = next(getattr(a.module, n) for n in ("num_attention_heads", "n_heads") if hasattr(a.module, n))
        assert heads_attr == a.num_heads
        if hasattr(a.module, "all_head_size"):
            assert a.module.all_head_size == a.num_heads * a.head_dim
        assert a.module.scaling == a.head_dim ** -0.5  # head size unchanged, so the scaling is too
    assert sum(a.num_heads for a in attention) < 8  # some heads went
    # hidden width untouched by default; the residual stream is intact
    assert pruned.config.hidden_size == 32 and pruned.classifier.in_features == 32  # no pooler pruning either
    torch.testing.assert_close(logits(pruned, x), logits(masked_reference(model, pruned), x), atol=1e-5,
                               rtol=1e-4)


def test_per_layer_head_counts_can_differ():
    model = tiny_vit()
    weak, strong = find_attention_modules(model)
    with torch.no_grad():  # heads 1-3 of the first layer negligible, every head of the second layer strong
        for p in weak.projections:
            p.weight[weak.head_dim:] *= 1e-3
            p.bias[weak.head_dim:] *= 1e-3
        layer = weak.path.rsplit(".attention", 1)[0] + "."  # its output projection: o_proj or attention.output.dense
        output = next(m for n, m in model.named_modules()
                      if n.startswith(layer) and n.endswith(("o_proj", "attention.output.dense")))
        output.weight[:, weak.head_dim:] *= 1e-3
        for p in strong.projections:
            p.weight *= 10
    result = hm.prune_to_speedup(model, VIT_INPUT, 1.3)
    heads = result.model.config.pruned_attention_heads
    assert heads[weak.path] == 1 and heads[strong.path] == 4
    pruned_q = find_attention_modules(result.model)[0].projections[0].weight
    assert torch.equal(pruned_q, weak.projections[0].weight[:weak.head_dim])  # the strong head survived


@pytest.mark.parametrize("make, x, auto", [(tiny_vit, VIT_INPUT, AutoModelForImageClassification),
                                           (tiny_bert, BERT_INPUT, AutoModelForSequenceClassification)],
                         ids=["vit", "bert"])
def test_pruned_model_reloads_with_from_pretrained(make, x, auto, tmp_path):
    pruned = hm.prune_to_speedup(make(), x, 2.5).model
    pruned.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors", "modeling_metaprune.py"]
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"].startswith("metaprune_") and config["pruned_attention_heads"]
    loaded = auto.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(pruned)
    assert loaded.config.pruned_attention_heads == pruned.config.pruned_attention_heads
    assert {k: tuple(v.shape) for k, v in loaded.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in pruned.state_dict().items()}
    assert torch.equal(logits(loaded, x), logits(pruned, x))
    # and in a fresh interpreter, where only `import hf_metaprune` registered the classes
    code = (f"import hf_metaprune, transformers, torch; m = transformers.{auto.__name__}.from_pretrained({str(tmp_path)!r}); "
            "print(type(m).__name__, sum(p.numel() for p in m.parameters()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [type(pruned).__name__, str(sum(p.numel() for p in pruned.parameters()))]
    # and without hf_metaprune at all: the folder carries its modeling code (trust_remote_code)
    assert (tmp_path / "modeling_metaprune.py").is_file() and "AutoConfig" in config["auto_map"]
    torch.save(x, tmp_path / "x.pt")
    code = ("import sys, torch, transformers; assert 'hf_metaprune' not in sys.modules; "
            f"m = transformers.{auto.__name__}.from_pretrained({str(tmp_path)!r}, trust_remote_code=True).eval(); "
            f"x = torch.load({str(tmp_path / 'x.pt')!r}); "
            "out = m(**x) if isinstance(x, dict) else m(x); "
            f"torch.save(out.logits, {str(tmp_path / 'remote.pt')!r}); assert 'hf_metaprune' not in sys.modules")
    env = {**os.environ, "PYTHONPATH": "", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home")}
    subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env,
                   cwd=str(tmp_path))
    assert torch.equal(torch.load(tmp_path / "remote.pt"), logits(pruned, x))


def test_pruning_a_pruned_model_again_keeps_it_reloadable(tmp_path):
    once = hm.prune_to_speedup(tiny_bert(), BERT_INPUT, 1.5).model
    twice = hm.prune_to_speedup(once, BERT_INPUT, 1.5).model
    twice.save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert torch.equal(logits(loaded, BERT_INPUT), logits(twice, BERT_INPUT))


def test_cross_attention_and_decoders_are_refused_untouched():
    model = tiny_bert(is_decoder=True, add_cross_attention=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(hm.UnsupportedModuleError, match="cross-attention"):
        hm.prune_to_speedup(model, BERT_INPUT, 2.0, inplace=True)
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in before.items()}
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


class FixedHeadAttention(nn.Module):
    """An attention implementation that reshapes with a head count fixed at construction."""

    def __init__(self, dim=16, heads=4):
        super().__init__()
        self.num_heads, self.head_dim, self.fixed = heads, dim // heads, heads
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.o_proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = (p(x).view(b, t, self.fixed, self.head_dim).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, self.fixed * self.head_dim))


class TinyEncoder(nn.Module):
    def __init__(self, attention: nn.Module):
        super().__init__()
        self.embed, self.attention, self.head = nn.Linear(8, 16), attention, nn.Linear(16, 3)

    def forward(self, x):
        h = self.embed(x)
        return self.head(h + self.attention(h)).mean(1)


class FusedQueryKeyAttention(FixedHeadAttention):
    """Queries and keys from one [2·H·d, C] projection, values from their own: neither layout head pruning knows."""

    def __init__(self):
        super().__init__()
        del self.q_proj, self.k_proj
        self.qk = nn.Linear(16, 32)

    def forward(self, x):
        b, t, _ = x.shape
        q, k = (p.view(b, t, self.fixed, self.head_dim).transpose(1, 2) for p in self.qk(x).chunk(2, -1))
        v = self.v_proj(x).view(b, t, self.fixed, self.head_dim).transpose(1, 2)
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, self.fixed * self.head_dim))


class UnnamedAttention(nn.Module):
    """q/k/v/output projections under names the library does not know, and a head size but no head count: found
    by structure (three equal-width linears in definition order), the count read off the query width."""

    def __init__(self, dim=16, head_dim=4):
        super().__init__()
        self.head_dim = head_dim
        self.to_queries, self.to_keys, self.to_values = (nn.Linear(dim, dim) for _ in range(3))
        self.mix = nn.Linear(dim, dim)

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = (p(x).view(b, t, -1, self.head_dim).transpose(1, 2)
                   for p in (self.to_queries, self.to_keys, self.to_values))
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.mix(y.transpose(1, 2).reshape(b, t, -1))


def test_attention_under_any_names_without_a_head_count_is_found_and_pruned_by_head():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 8)
    model = TinyEncoder(UnnamedAttention()).eval()
    (a,) = find_attention_modules(model)
    assert (a.path, a.num_heads, a.head_dim) == ("attention", 4, 4)
    assert a.projections == (model.attention.to_queries, model.attention.to_keys, model.attention.to_values)
    with torch.no_grad():  # heads 1 and 3 weak by hand: those are the ones removed
        for h in (1, 3):
            for p in a.projections:
                p.weight[h * 4:(h + 1) * 4] *= 1e-3
    result = hm.prune_to_speedup(model, x, 1.2)
    (pruned,) = find_attention_modules(result.model)
    assert pruned.num_heads < 4 and result.speed_up >= 1.2
    kept = kept_rows(model.attention.to_values.weight, pruned.projections[2].weight, 4)
    assert len(kept) == pruned.num_heads and set(range(4)) - set(kept) <= {1, 3}
    groups = hm.ChannelGroups.from_model(model, x)
    assert groups.group_sizes == [4]  # the heads (the residual width is not pruned in models with attention)
    graph = hm.model_to_graph(model, x)  # the graph splits query/key from value/output channels by this structure
    torch.testing.assert_close(hm.graph_to_model(graph, model)(x), model(x), rtol=0, atol=0)


def test_unsupported_attention_is_refused_with_the_module_named_and_model_untouched():
    x = torch.randn(2, 5, 8)
    model = TinyEncoder(FixedHeadAttention()).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(hm.UnsupportedModuleError, match="'attention'.*pruned number of heads"):
        hm.prune_to_speedup(model, x, 1.3, inplace=True)
    assert all(torch.equal(v, model.state_dict()[k]) and v.shape == model.state_dict()[k].shape
               for k, v in before.items())
    with pytest.raises(hm.UnsupportedModuleError, match="FusedQueryKeyAttention.*query/key/value"):
        hm.prune_to_speedup(TinyEncoder(FusedQueryKeyAttention()).eval(), x, 1.3)


def test_failed_inplace_pruning_leaves_the_model_untouched():
    model = tiny_vit()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="cannot reach"):
        hm.prune_to_speedup(model, VIT_INPUT, 20.0, max_pruning_ratio=0.5, inplace=True)
    assert all(torch.equal(v, model.state_dict()[k]) and v.shape == model.state_dict()[k].shape
               for k, v in before.items())
    assert type(model) is ViTForImageClassification
    result = hm.prune_to_speedup(model, VIT_INPUT, 2.0, inplace=True)
    assert result.model is model and type(model).__name__ == "MetaPrunedViTForImageClassification"


@pytest.mark.parametrize("make, x, auto", [(tiny_vit, VIT_INPUT, AutoModelForImageClassification),
                                           (tiny_bert, BERT_INPUT, AutoModelForSequenceClassification)],
                         ids=["vit", "bert"])
def test_optional_hidden_width_pruning_reloads(make, x, auto, tmp_path):
    torch.manual_seed(0)  # random ranking, so the residual stream surely loses channels
    pruned = hm.prune_to_speedup(make(), x, 2.0, importance="random", prune_hidden=True).model
    norms = [m for m in pruned.modules() if isinstance(m, nn.LayerNorm)]
    assert len({m.normalized_shape[0] for m in norms}) == 1 and norms[0].normalized_shape[0] < 32
    pruned.save_pretrained(tmp_path)
    loaded = auto.from_pretrained(tmp_path).eval()
    assert torch.equal(logits(loaded, x), logits(pruned, x))


def tiny_beit_with_relative_bias(seed: int = 0) -> nn.Module:
    """BEiT as its checkpoints are configured: a relative position bias table [positions, heads] in every layer."""
    from transformers import BeitConfig, BeitForImageClassification
    torch.manual_seed(seed)
    config = BeitConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, num_labels=3, use_relative_position_bias=True)
    model = BeitForImageClassification(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("relative_position_bias_table"):
                p.normal_()  # zeros at init would hide a wrong column
    return model


def test_per_head_tables_are_in_the_graph_and_pruned_with_their_heads(tmp_path):
    model = tiny_beit_with_relative_bias()
    x = VIT_INPUT[:1]
    table = "beit.layers.0.relative_position_bias.relative_position_bias_table"
    graph = hm.model_to_graph(model, x)
    assert torch.equal(logits(hm.graph_to_model(graph, tiny_beit_with_relative_bias(seed=1)), VIT_INPUT),
                       logits(model, VIT_INPUT))
    slot = next(s for s in graph.slots if s.name == table)
    heads = graph.edges[slot.kind].index[1, slot.start:slot.end].view(-1, 4)[0]  # the node each column feeds
    q_slot = next(s for s in graph.slots if s.name == "beit.layers.0.attention.q_proj.weight")
    queries = graph.edges[q_slot.kind].index[1, q_slot.start:q_slot.end].view(32, 32)[:, 0]
    assert torch.equal(heads, queries[::8])  # column h on head h's first query/key channel

    weak = find_attention_modules(model)[0]
    with torch.no_grad():  # heads 0 and 2 of the first layer negligible
        for h in (0, 2):
            for p in weak.projections:
                p.weight[h * 8:(h + 1) * 8] *= 1e-3
            model.beit.layers[0].attention.o_proj.weight[:, h * 8:(h + 1) * 8] *= 1e-3
    result = hm.prune_to_speedup(model, x, 1.3)
    pruned = result.model
    assert result.model.config.pruned_attention_heads["beit.layers.0.attention"] == 2
    kept_table = pruned.get_parameter(table)
    assert torch.equal(kept_table, model.get_parameter(table)[:, [1, 3]])  # the surviving heads' columns
    torch.testing.assert_close(logits(pruned, VIT_INPUT), logits(masked_reference(model, pruned), VIT_INPUT),
                               atol=1e-5, rtol=1e-4)
    pruned.save_pretrained(tmp_path)
    again = AutoModelForImageClassification.from_pretrained(tmp_path)
    assert torch.equal(logits(again, VIT_INPUT), logits(pruned, VIT_INPUT))
