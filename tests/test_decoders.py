"""Decoder LLMs (🤗 Llama, Qwen2, Mistral, Phi): grouped-query attention pruned in whole key/value groups or in
query heads, MLP neurons, optionally the hidden width; pruned models run, reload (also in a new process) and
generate with a cache exactly as without one."""
import os
import subprocess
import sys

import pytest
import torch
import transformers
from torch.func import functional_call

import hf_metaprune as hm
from hf_metaprune.pruning import ChannelGroups, find_attention_modules

TINY = dict(vocab_size=120, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0)
ARCHITECTURES = {  # model class, config class, extra config
    "llama": ("LlamaForCausalLM", "LlamaConfig", {}),
    "qwen2": ("Qwen2ForCausalLM", "Qwen2Config", {}),
    "mistral": ("MistralForCausalLM", "MistralConfig", {}),
    "phi": ("PhiForCausalLM", "PhiConfig", {"partial_rotary_factor": 0.5}),  # rotary on half of each head
    "llama-classifier": ("LlamaForSequenceClassification", "LlamaConfig", {"num_labels": 3}),
}
IDS = {"input_ids": torch.randint(1, 120, (2, 10), generator=torch.Generator().manual_seed(0))}


def tiny(name: str, **overrides) -> transformers.PreTrainedModel:
    model_class, config_class, extra = ARCHITECTURES[name]
    torch.manual_seed(0)
    config = getattr(transformers, config_class)(**{**TINY, **extra, **overrides})
    return getattr(transformers, model_class)(config).eval()


def logits(model, inputs=IDS, params=None):
    with torch.no_grad():
        out = model(**inputs) if params is None else functional_call(model, params, (), dict(inputs))
    return out.logits


def weaken(model, heads: list[int], kv_heads: list[int] = ()) -> None:
    """Scale query heads (their q rows and output columns) and key/value heads down by hand in every layer, so
    group-L2 ranks exactly them lowest."""
    with torch.no_grad():
        for a in find_attention_modules(model):
            q, k, v = a.projections
            d = a.head_dim
            for h in heads:
                q.weight[h * d:(h + 1) * d] *= 1e-3
                a.output.weight[:, h * d:(h + 1) * d] *= 1e-3
            for h in kv_heads:
                k.weight[h * d:(h + 1) * d] *= 1e-3
                v.weight[h * d:(h + 1) * d] *= 1e-3


@pytest.mark.parametrize("name", list(ARCHITECTURES))
@pytest.mark.parametrize("granularity", ["kv_group", "query"])
def test_pruned_decoder_equals_the_masked_reference(name, granularity):
    """Prune to explicit widths (heads and neurons halved), keeping the strongest units: the pruned logits equal the
    full model's with the removed units' slices zeroed. Heads made weak by hand are the ones removed, so a kept
    query head reading the wrong key/value head would show."""
    model = tiny(name)
    if granularity == "kv_group":
        weaken(model, heads=[0, 1], kv_heads=[0])  # key/value group 0 (query heads 0, 1)
    else:
        weaken(model, heads=[0, 2])  # query slot 0 of both groups
    groups = ChannelGroups.from_model(model, IDS, head_granularity=granularity)
    assert groups.head_granularity == granularity  # what its units are, for prune_to_widths / prune_units
    widths = [max(1, size // 2) for size in groups.group_sizes]
    params = dict(model.named_parameters())
    removed = groups.removed_for_widths(widths, params)
    pruned = hm.prune_to_widths(model, IDS, widths, keep="group_l2", head_granularity=granularity).model
    for a in find_attention_modules(pruned):
        assert (a.num_heads, a.num_key_value_heads) == ((2, 1) if granularity == "kv_group" else (2, 2))
        assert a.module.num_key_value_groups == a.num_heads // a.num_key_value_heads
        q, k, v = a.projections
        full = dict(model.named_modules())[a.path]
        kept_q = [2, 3] if granularity == "kv_group" else [1, 3]
        assert torch.equal(q.weight, torch.cat([full.q_proj.weight[h * 8:(h + 1) * 8] for h in kept_q]))
        kept_kv = [1] if granularity == "kv_group" else [0, 1]
        assert torch.equal(k.weight, torch.cat([full.k_proj.weight[h * 8:(h + 1) * 8] for h in kept_kv]))
    reference = logits(model, params=groups.apply_mask(params, (~removed).float()))
    torch.testing.assert_close(logits(pruned), reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["llama", "phi"])
def test_prune_to_speedup_reaches_the_target_and_generates_with_every_cache(name):
    model = tiny(name)
    weaken(model, heads=[0, 1], kv_heads=[0])
    result = hm.prune_to_speedup(model, IDS, 1.6)
    assert 1.6 <= result.speed_up <= 1.6 * 1.01
    pruned = result.model
    assert [a.num_key_value_heads for a in find_attention_modules(pruned)] == [1, 1]
    assert pruned.config.pruned_key_value_heads == {f"model.layers.{i}.self_attn": 1 for i in range(2)}
    prompt = IDS["input_ids"][:1, :4]
    with torch.no_grad():
        cached = pruned.generate(prompt, max_new_tokens=8, do_sample=False)
        uncached = pruned.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=False)
        static = pruned.generate(prompt, max_new_tokens=8, do_sample=False, cache_implementation="static")
    assert cached.shape == (1, 12)
    assert torch.equal(cached, uncached) and torch.equal(cached, static)


def test_key_value_rows_count_in_the_importance_that_ranks_key_value_groups():
    """The trace leaves keys and values out; the group-L2 score of a key/value group must still count them. Group 0
    has the weakest query rows and output columns but by far the strongest key and value rows: it is kept."""
    model = tiny("llama")
    weaken(model, heads=[0, 1])  # query heads 0 and 1: key/value group 0
    with torch.no_grad():
        for a in find_attention_modules(model):
            for projection in a.projections[1:]:
                projection.weight[:8] *= 1e4
    strong = {a.path: [p.weight[:8].clone() for p in a.projections[1:]] for a in find_attention_modules(model)}
    pruned = hm.prune_to_speedup(model, IDS, 1.6).model
    for a in find_attention_modules(pruned):
        assert a.num_key_value_heads == 1
        assert all(torch.equal(p.weight, w) for p, w in zip(a.projections[1:], strong[a.path]))


def test_query_granularity_keeps_key_value_heads_and_equal_groups():
    result = hm.prune_to_speedup(tiny("llama"), IDS, 1.6, head_granularity="query")
    for a in find_attention_modules(result.model):
        assert a.num_key_value_heads == 2 and a.num_heads % 2 == 0
    with pytest.raises(ValueError, match="head_granularity must be one of"):
        hm.prune_to_speedup(tiny("llama"), IDS, 1.6, head_granularity="heads")


def test_prune_hidden_keeps_keys_and_values_in_step(tmp_path):
    """The residual width: keys and values (outside the trace) lose the same input columns as the queries."""
    model = tiny("llama", tie_word_embeddings=False)
    result = hm.prune_to_speedup(model, IDS, 1.5, prune_hidden=True)
    pruned = result.model
    hidden = pruned.model.embed_tokens.embedding_dim
    assert hidden < 32
    for a in find_attention_modules(pruned):
        assert {p.in_features for p in a.projections} == {hidden} and a.output.out_features == hidden
    assert pruned.lm_head.in_features == hidden and pruned.model.norm.weight.shape == (hidden,)
    pruned.save_pretrained(tmp_path)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert torch.equal(logits(loaded), logits(pruned))


def test_tied_embeddings_keep_the_hidden_width_and_stay_tied():
    model = tiny("llama", tie_word_embeddings=True)
    pruned = hm.prune_to_speedup(model, IDS, 1.3, prune_hidden=True).model
    assert pruned.lm_head.weight is pruned.model.embed_tokens.weight and pruned.lm_head.in_features == 32


@pytest.mark.parametrize("name", ["qwen2", "llama-classifier"])
def test_pruned_decoder_reloads_in_a_new_process(tmp_path, name):
    """With ``import hf_metaprune`` and with ``trust_remote_code`` alone. A generic head (the classifier) builds its
    backbone through ``AutoModel.from_config``: that backbone must not shrink itself with the head's shapes."""
    model = tiny(name)
    weaken(model, heads=[0, 1], kv_heads=[0])
    pruned = hm.prune_to_speedup(model, IDS, 1.6).model
    assert [a.num_key_value_heads for a in find_attention_modules(pruned)] == [1, 1]
    pruned.save_pretrained(tmp_path)
    again = type(pruned).from_pretrained(tmp_path).eval()  # in this process too
    assert torch.equal(logits(again), logits(pruned))
    torch.save(IDS, tmp_path / "ids.pt")
    causal = name != "llama-classifier"
    auto = "AutoModelForCausalLM" if causal else "AutoModelForSequenceClassification"
    generate = "m.generate(x['input_ids'][:1, :4], max_new_tokens=6, do_sample=False)" if causal else "None"
    for extra, env in (("import hf_metaprune; ", dict(os.environ)),  # classes registered by the import
                       ("", {**os.environ, "PYTHONPATH": "", "HF_HUB_OFFLINE": "1"})):  # trust_remote_code alone
        code = (f"{extra}import sys, torch, transformers; "
                f"m = transformers.{auto}.from_pretrained({str(tmp_path)!r}, trust_remote_code=True)"
                f".eval(); x = torch.load({str(tmp_path / 'ids.pt')!r}); g = {generate}; "
                f"torch.save((m(**x).logits, g), {str(tmp_path / 'out.pt')!r}); "
                f"assert ('hf_metaprune' in sys.modules) == {bool(extra)}")
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env,
                       cwd=str(tmp_path))
        out, generated = torch.load(tmp_path / "out.pt")
        assert torch.equal(out, logits(pruned))
        if causal:
            with torch.no_grad():
                assert torch.equal(generated, pruned.generate(IDS["input_ids"][:1, :4], max_new_tokens=6,
                                                              do_sample=False))


def test_gpt2_is_refused_with_the_attention_named():
    """GPT-2 fuses q/k/v in a Conv1D: pruning and the graph adapter both refuse it, naming the attention."""
    config = transformers.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    gpt2 = transformers.GPT2LMHeadModel(config).eval()
    x = {"input_ids": torch.randint(1, 100, (1, 8))}
    with pytest.raises(hm.UnsupportedModuleError, match=r"module 'transformer\.h\.0\.attn' .*Conv1D"):
        hm.prune_to_speedup(gpt2, x, 1.5)
    with pytest.raises(hm.UnsupportedModuleError, match=r"module 'transformer\.h\.0\.attn' .*Conv1D"):
        hm.model_to_graph(gpt2, x)


@pytest.mark.parametrize("name,tied", [(n, False) for n in ARCHITECTURES] + [("qwen2", True)])
def test_decoder_graph_round_trip_is_bit_exact(name, tied):
    model = tiny(name, tie_word_embeddings=tied)
    g = hm.model_to_graph(model, IDS)
    assert g.num_covered_parameters == sum(p.numel() for p in model.parameters())  # a tied weight counts once
    back = hm.graph_to_model(g, model)
    for key, value in model.state_dict().items():
        assert torch.equal(value, back.state_dict()[key]), key
    assert torch.equal(logits(back), logits(model))
    if tied:
        assert g.aliases == {"lm_head.weight": "model.embed_tokens.weight"}
        assert back.lm_head.weight is back.model.embed_tokens.weight


def test_decoder_graph_gives_key_value_heads_nodes_and_pairs_each_query_head_with_its_own():
    model = tiny("llama")  # 4 query heads, 2 key/value heads of 8 channels: g = 2
    g = hm.model_to_graph(model, IDS)
    sizes = torch.bincount(g.node_set)
    for layer in range(2):
        path = f"model.layers.{layer}.self_attn"
        assert sizes[g.set_names.index(f"{path}:query_key")] == 16 and sizes[g.set_names.index(f"{path}:value")] == 16

    def targets(name: str) -> torch.Tensor:  # the node each output row of a linear layer writes
        slot = next(s for s in g.slots if s.name == name)
        kind = g.edges[slot.kind]
        return kind.index[1, slot.start:slot.end].view(slot.shape[0], -1)[:, 0]

    def sources(name: str) -> torch.Tensor:  # the node each input column of a linear layer reads
        slot = next(s for s in g.slots if s.name == name)
        return g.edges[slot.kind].index[0, slot.start:slot.end].view(slot.shape)[0]

    q, k = targets("model.layers.0.self_attn.q_proj.weight"), targets("model.layers.0.self_attn.k_proj.weight")
    v, o = targets("model.layers.0.self_attn.v_proj.weight"), sources("model.layers.0.self_attn.o_proj.weight")
    assert torch.equal(q.view(4, 8), k.view(2, 8).repeat_interleave(2, 0))  # query heads 0, 1 read key head 0
    assert torch.equal(o.view(4, 8), v.view(2, 8).repeat_interleave(2, 0))  # output columns of head h: value h // 2
    assert not set(k.tolist()) & set(v.tolist())
    assert torch.equal(sources("model.layers.0.self_attn.k_proj.weight"),
                       sources("model.layers.0.self_attn.q_proj.weight"))  # keys read the same hidden channels


def _swap_kv_groups(model) -> None:
    """Exchange key/value groups 0 and 1 in every layer (their query heads, key/value heads and output columns):
    the same function, with the heads relabelled."""
    with torch.no_grad():
        for a in find_attention_modules(model):
            q, k, v = a.projections
            d, g = a.head_dim, a.num_heads // a.num_key_value_heads
            rows = torch.cat([torch.arange(g * d, 2 * g * d), torch.arange(g * d)])
            q.weight.copy_(q.weight[rows])
            a.output.weight.copy_(a.output.weight[:, rows])
            kv_rows = torch.cat([torch.arange(d, 2 * d), torch.arange(d)])
            k.weight.copy_(k.weight[kv_rows])
            v.weight.copy_(v.weight[kv_rows])


def test_a_metanetwork_transforms_a_decoder_equivariantly_and_prunes_it():
    model = tiny("llama")
    g = hm.model_to_graph(model, IDS)
    metapruner = hm.MetaPrunerModel(hm.MetaPrunerConfig.for_graphs([g], hidden_size=8, num_layers=2)).eval()
    assert torch.equal(logits(metapruner.transform(model, IDS)), logits(model))  # untrained: the identity
    torch.manual_seed(1)
    with torch.no_grad():  # a metanetwork that really edits the weights
        for p in metapruner.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    transformed = metapruner.transform(model, IDS)
    assert not torch.allclose(logits(transformed), logits(model))
    swapped = tiny("llama")
    _swap_kv_groups(swapped)
    torch.testing.assert_close(logits(swapped), logits(model), rtol=1e-5, atol=1e-5)  # the same function
    transformed_swapped = metapruner.transform(swapped, IDS)
    _swap_kv_groups(transformed_swapped)  # relabelled back: the metanetwork edited the heads, not their labels
    for key, value in transformed.state_dict().items():
        torch.testing.assert_close(transformed_swapped.state_dict()[key], value, rtol=1e-4, atol=1e-5)
    result = metapruner.prune(model, IDS, speed_up=1.5)
    assert result.speed_up >= 1.5 and result.model(**IDS).logits.shape == logits(model).shape
