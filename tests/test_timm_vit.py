"""timm vision transformers, whose attention fuses query/key/value in one ``qkv`` linear: an exact graph with the
three thirds as two head spaces (query/key, value/output), heads pruned whole in all three thirds, reload through
``load_pruned`` in a new process, and a metanetwork that transforms and prunes them."""
import os
import subprocess
import sys

import pytest
import timm
import torch
from safetensors.torch import load_file
from torch import nn

import hf_metaprune as hm

TINY = dict(img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=4, mlp_ratio=2.0, num_classes=3)
ARCHS = ["vit_tiny_patch16_224", "deit_tiny_patch16_224", "deit_tiny_distilled_patch16_224"]
X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
HEAD_DIM = 8


def tiny(arch: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = timm.create_model(arch, pretrained=False, **TINY).eval()
    with torch.no_grad():  # non-trivial biases and norms, so every record column is checked for real
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.normal_(0, 0.5)
    return model


def out(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        y = model(X)
    return y[0] if isinstance(y, tuple) else y


def slot_nodes(graph: hm.NetworkGraph, name: str, side: int) -> torch.Tensor:
    """Source (0) or destination (1) node of every edge of weight ``name``."""
    slot = next(s for s in graph.slots if s.name == name)
    return graph.edges[slot.kind].index[side, slot.start:slot.end]


@pytest.mark.parametrize("arch", ARCHS)
def test_round_trip_is_bit_exact_and_the_fused_projection_holds_two_head_spaces(arch):
    model = tiny(arch)
    graph = hm.model_to_graph(model, X[:1])
    assert sorted(s.name for s in graph.slots) + sorted(graph.static_buffers) == sorted(model.state_dict())
    assert graph.num_covered_parameters == sum(p.numel() for p in model.parameters())
    rebuilt = hm.graph_to_model(graph, tiny(arch, seed=1))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in rebuilt.state_dict().items())
    assert torch.equal(out(rebuilt), out(model))

    for block in range(2):
        qkv = f"blocks.{block}.attn.qkv.weight"
        rows = slot_nodes(graph, qkv, 1).view(96, 32)[:, 0]  # output node of each of the 96 rows
        q, k, v = rows.chunk(3)
        assert torch.equal(q, k)  # a query channel and its key channel meet in q·kᵀ: one node
        assert len(set(q.tolist()) | set(v.tolist())) == 64  # values are other nodes
        proj_in = slot_nodes(graph, f"blocks.{block}.attn.proj.weight", 0).view(32, 32)[0]
        assert torch.equal(proj_in, v)  # the output projection reads the values, channel by channel
        assert {graph.set_names[int(graph.node_set[n])] for n in (q[0], v[0])} == \
            {f"blocks.{block}.attn:query_key", f"blocks.{block}.attn:value"}
    # no node is left without a weight or a record (the key third's own nodes were merged away)
    used = torch.cat([e.index.flatten() for e in graph.edges.values()] + [r.node for r in graph.records.values()])
    assert torch.equal(torch.unique(used), torch.arange(graph.num_nodes))


def weaken_heads(model: nn.Module, block: int, heads: list[int]) -> None:
    """Make ``heads`` of ``block`` negligible by hand: their rows in all three thirds of qkv and the projection's
    columns reading them."""
    attn = model.blocks[block].attn
    with torch.no_grad():
        for h in heads:
            for third in range(3):
                rows = slice(third * 32 + h * HEAD_DIM, third * 32 + (h + 1) * HEAD_DIM)
                attn.qkv.weight[rows] *= 1e-3
                attn.qkv.bias[rows] *= 1e-3
            attn.proj.weight[:, h * HEAD_DIM:(h + 1) * HEAD_DIM] *= 1e-3


def masked_reference(model: nn.Module, pruned: nn.Module) -> nn.Module:
    """``model`` with every removed head and MLP neuron zeroed where it enters the residual stream."""
    reference = tiny("vit_tiny_patch16_224")
    reference.load_state_dict(model.state_dict())
    for block, kept_block in zip(reference.blocks, pruned.blocks):
        q_rows = block.attn.qkv.weight[:32].split(HEAD_DIM)
        kept = [next(i for i, r in enumerate(q_rows) if torch.equal(r, p))
                for p in kept_block.attn.qkv.weight[:kept_block.attn.attn_dim].split(HEAD_DIM)]
        mask = torch.zeros(4, HEAD_DIM)
        mask[kept] = 1
        block.attn.proj.weight.data *= mask.reshape(1, -1)
        neurons = [next(i for i, r in enumerate(block.mlp.fc1.weight) if torch.equal(r, p))
                   for p in kept_block.mlp.fc1.weight]
        mask = torch.zeros(block.mlp.fc1.out_features)
        mask[neurons] = 1
        block.mlp.fc2.weight.data *= mask
    return reference


def test_heads_are_pruned_whole_in_all_three_thirds():
    model = tiny("vit_tiny_patch16_224")
    weaken_heads(model, 0, [1, 2, 3])
    with torch.no_grad():
        model.blocks[1].attn.qkv.weight *= 10  # every head of the second block strong
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = hm.prune_to_speedup(model, X[:1], 1.3)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # input untouched
    first, second = (b.attn for b in result.model.blocks)
    assert (first.num_heads, first.attn_dim, second.num_heads, second.attn_dim) == (1, HEAD_DIM, 4, 32)
    assert first.head_dim == HEAD_DIM and first.scale == HEAD_DIM ** -0.5
    original = model.blocks[0].attn.qkv
    for third in range(3):  # head 0 survives in the query, key and value thirds, in that order
        rows = slice(third * 32, third * 32 + HEAD_DIM)
        assert torch.equal(first.qkv.weight[third * HEAD_DIM:(third + 1) * HEAD_DIM], original.weight[rows])
        assert torch.equal(first.qkv.bias[third * HEAD_DIM:(third + 1) * HEAD_DIM], original.bias[rows])
    assert torch.equal(first.proj.weight, model.blocks[0].attn.proj.weight[:, :HEAD_DIM])


@pytest.mark.parametrize("speed_up", [1.5, 2.0])
def test_pruned_logits_equal_the_masked_reference(speed_up):
    model = tiny("vit_tiny_patch16_224")
    weaken_heads(model, 0, [2])
    weaken_heads(model, 1, [0, 3])
    result = hm.prune_to_speedup(model, X[:1], speed_up)
    assert speed_up <= result.speed_up <= speed_up * 1.011
    heads = [b.attn.num_heads for b in result.model.blocks]
    assert heads[0] <= 3 and heads[1] <= 2  # at least the weakened heads went
    torch.testing.assert_close(out(result.model), out(masked_reference(model, result.model)), atol=1e-5, rtol=1e-4)


RELOAD = """
import sys, torch
import hf_metaprune as hm
from safetensors.torch import save_file
root, names = sys.argv[1], sys.argv[2:]
x = torch.load(f"{root}/x.pt", weights_only=True)
out = {}
for name in names:
    model = hm.load_pruned(f"{root}/{name}")
    with torch.no_grad():
        out[name] = model(x).contiguous()
    out[name + "-heads"] = torch.tensor([b.attn.num_heads for b in model.blocks])
save_file(out, f"{root}/reloaded.safetensors")
"""


def test_pruned_timm_vits_reload_in_a_new_process(tmp_path):
    expected = {}
    for arch in ARCHS[:2]:
        model = tiny(arch)
        weaken_heads(model, 1, [1])
        pruned = hm.prune_to_speedup(model, X[:1], 2.0).model
        hm.save_pruned(pruned, tmp_path / arch, model_kwargs={k: v for k, v in TINY.items() if k != "num_classes"})
        expected[arch] = out(pruned)
        expected[arch + "-heads"] = torch.tensor([b.attn.num_heads for b in pruned.blocks])
        assert expected[arch + "-heads"].sum() < 8
    torch.save(X, tmp_path / "x.pt")
    script = tmp_path / "reload.py"
    script.write_text(RELOAD)
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    subprocess.run([sys.executable, str(script), str(tmp_path), *ARCHS[:2]], check=True, env=env, timeout=300)
    reloaded = load_file(tmp_path / "reloaded.safetensors")
    for key, value in expected.items():
        assert torch.equal(reloaded[key], value), key


def test_a_metanetwork_transforms_and_prunes_a_timm_vit(tmp_path):
    model = tiny("vit_tiny_patch16_224")
    weaken_heads(model, 0, [1])
    graph = hm.model_to_graph(model, X[:1])
    metapruner = hm.MetaPrunerModel(hm.MetaPrunerConfig.for_graphs([graph], hidden_size=8, num_layers=2))
    assert {"embedding", "8x8", "1x1"} <= set(metapruner.config.edge_kinds)
    transformed = metapruner.transform(model, X[:1])
    assert torch.equal(out(transformed), out(model))  # an untrained metanetwork is the identity
    with torch.no_grad():  # a trained one changes weights: move every edge and record a little
        for p in metapruner.parameters():
            p.add_(0.05 * torch.randn_like(p))
    transformed = metapruner.transform(model, X[:1])
    assert not torch.equal(out(transformed), out(model))
    assert [b.attn.num_heads for b in transformed.blocks] == [4, 4]
    result = metapruner.prune(model, X[:1], speed_up=2.0)
    assert result.speed_up >= 2.0 and sum(b.attn.num_heads for b in result.model.blocks) < 8
    direct = hm.prune_to_speedup(transformed, X[:1], 2.0).model  # prune() = transform, then the group criterion
    assert hm.pruning.module_widths(result.model) == hm.pruning.module_widths(direct)
    hm.save_pruned(result.model, tmp_path, model_kwargs={k: v for k, v in TINY.items() if k != "num_classes"})
    assert torch.equal(out(hm.load_pruned(tmp_path)), out(result.model))
