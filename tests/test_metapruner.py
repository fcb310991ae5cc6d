import json
import os

import pytest
import torch
from transformers import AutoConfig, AutoModel

import hf_metaprune as hm
from hf_metaprune import MetaPrunerConfig, MetaPrunerModel, model_to_graph

from conftest import example_input, make_model


def _metapruner(**kw) -> MetaPrunerModel:
    """Random decoders (``init_identity=False``) so Δ is not trivially zero."""
    torch.manual_seed(0)
    kw.setdefault("init_identity", False)
    return MetaPrunerModel(MetaPrunerConfig(hidden_size=kw.pop("hidden_size", 16), num_layers=kw.pop("num_layers", 2),
                                            **kw)).eval()


def test_config_round_trip_and_auto_classes(tmp_path):
    config = MetaPrunerConfig(hidden_size=8, num_layers=3, residual_scale=0.05, edge_kinds=["1x1", "3x3"])
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "metapruner" and saved["hidden_size"] == 8
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, MetaPrunerConfig) and loaded.edge_kinds == ["1x1", "3x3"]
    assert isinstance(AutoModel.from_config(loaded), MetaPrunerModel)


def test_save_and_load_reproduce_outputs_exactly(tmp_path):
    model = make_model("cifar_resnet20")
    x = example_input(32)
    mp = _metapruner()
    mp.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in os.listdir(tmp_path))
    for loaded in (MetaPrunerModel.from_pretrained(tmp_path), AutoModel.from_pretrained(tmp_path)):
        a, b = mp.transform(model, x), loaded.eval().transform(model, x)
        for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(va, vb), k


def test_loading_a_mismatched_checkpoint_fails_clearly(tmp_path):
    _metapruner(hidden_size=16).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="does not match the MetaPrunerModel its config describes.*mismatched keys"):
        MetaPrunerModel.from_pretrained(tmp_path, hidden_size=8)


def test_loading_a_corrupt_checkpoint_fails_clearly(tmp_path):
    _metapruner().save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="weights in .* are not a readable safetensors file"):
        MetaPrunerModel.from_pretrained(tmp_path)


def test_default_metanetwork_starts_as_the_exact_identity():
    model = make_model("cifar_resnet20")
    torch.manual_seed(0)
    new = MetaPrunerModel(MetaPrunerConfig(hidden_size=8, num_layers=1, residual_scale=1.0)).transform(
        model, example_input(32))
    for (k, a), b in zip(model.state_dict().items(), new.state_dict().values()):
        assert torch.equal(a, b), k


def test_untrained_metanetwork_is_near_identity_and_input_untouched():
    model = make_model("cifar_resnet20")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    new = _metapruner(residual_scale=1e-3).transform(model, example_input(32))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    diffs = [(a - b).abs().max().item() for a, b in zip(new.parameters(), model.parameters())]
    assert 0 < max(diffs) < 0.05
    for name, buf in model.named_buffers():  # running statistics are inputs only
        assert torch.equal(buf, dict(new.named_buffers())[name])


def test_one_config_serves_mixed_kernel_sizes():
    mp = _metapruner()
    for name, res in [("resnet18", 64), ("convnext_atto", 64), ("efficientnet_b0", 64)]:
        model = make_model(name)
        new = mp.transform(model, example_input(res))
        assert all(a.shape == b.shape for a, b in zip(new.parameters(), model.parameters()))
        assert any(not torch.equal(a, b) for a, b in zip(new.parameters(), model.parameters()))


def test_graph_kind_without_encoder_is_a_clear_error():
    mp = _metapruner(edge_kinds=["1x1"])
    with pytest.raises(ValueError, match="no encoder.*3x3"):
        mp.transform(make_model("cifar_resnet20"), example_input(32))


def test_config_for_graphs_has_no_unused_parameters():
    model = make_model("cifar_resnet20")
    graph = model_to_graph(model, example_input(32))
    mp = MetaPrunerModel(MetaPrunerConfig.for_graphs([graph], hidden_size=8, num_layers=2, init_identity=False))
    out = mp(graph)
    loss = sum(e.features.sum() for e in out.edges.values()) + sum(r.features.sum() for r in out.records.values())
    loss.backward()
    assert all(p.grad is not None for p in mp.parameters())


def test_permuting_a_hidden_layer_permutes_the_output():
    """Equivariance: permute layer1.0's inner channels (conv1 rows, bn1, conv2 columns)."""
    model = make_model("cifar_resnet20")
    x = example_input(32)
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(3))
    permuted = make_model("cifar_resnet20")
    block = permuted.layer1[0]
    with torch.no_grad():
        block.conv1.weight.copy_(block.conv1.weight[perm])
        for t in ("weight", "bias", "running_mean", "running_var"):
            getattr(block.bn1, t).copy_(getattr(block.bn1, t)[perm])
        block.conv2.weight.copy_(block.conv2.weight[:, perm])
    assert torch.allclose(model(x), permuted(x), atol=1e-4)  # same function
    mp = _metapruner(residual_scale=1.0, num_layers=3)
    a, b = mp.transform(model, x), mp.transform(permuted, x)
    ba, bb = a.layer1[0], b.layer1[0]
    assert not torch.allclose(ba.conv1.weight, model.layer1[0].conv1.weight, atol=1e-3)  # Δ is not trivial
    torch.testing.assert_close(bb.conv1.weight, ba.conv1.weight[perm], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(bb.bn1.weight, ba.bn1.weight[perm], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(bb.bn1.bias, ba.bn1.bias[perm], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(bb.conv2.weight, ba.conv2.weight[:, perm], atol=1e-5, rtol=1e-4)
    sa, sb = a.state_dict(), b.state_dict()
    untouched = [k for k in sa if not k.startswith(("layer1.0.conv1", "layer1.0.bn1", "layer1.0.conv2"))]
    for k in untouched:
        torch.testing.assert_close(sb[k], sa[k], atol=1e-5, rtol=1e-4)


def test_prune_reaches_target_and_keeps_classes():
    model = make_model("cifar_resnet56")
    x = example_input(32)
    result = _metapruner().prune(model, x, speed_up=2.0)
    assert 2.0 <= result.speed_up <= 2.02
    assert result.params_after < result.params_before and result.macs_after < result.macs_before
    assert result.model.fc.out_features == 10
    assert result.model(torch.randn(4, 3, 32, 32)).shape == (4, 10)
    with pytest.raises(ValueError, match=r"speed_up must be in \(1.0, inf\]"):
        _metapruner().prune(model, x, speed_up=1.0)
    rounded = _metapruner().prune(model, x, speed_up=2.0, round_to=8)  # kernel-friendly widths
    assert rounded.speed_up >= 2.0
    assert all(w % 8 == 0 for w in hm.ChannelGroups.from_model(rounded.model, x).group_sizes)


@pytest.mark.parametrize("aggregations", [["mean", "max", "min", "std"], ["sum", "var"]])
def test_inference_streams_messages_and_equals_the_differentiable_pyg_path(aggregations):
    """Without gradients, messages are pooled chunk by chunk into running statistics (no ``[E, H]`` messages) and
    edge states are updated in place; the outputs equal PyG's path (the training one), also for the nodes no edge
    reaches (the image channels get no forward messages, the logits no backward ones: PyG gives them 0)."""
    from hf_metaprune.methods.metapruner.modeling import DirectedMessages

    torch.manual_seed(0)
    h, e = torch.randn(30, 8), torch.randn(500, 8)
    edge_index = torch.randint(0, 24, (2, 500))  # nodes 24..29: no edges
    messages = DirectedMessages(8, aggregations, chunk_size=64)
    for reverse in (False, True):
        reference = messages(h, edge_index, e, reverse=reverse)
        assert reference.requires_grad  # the PyG path
        with torch.no_grad():
            streamed = messages(h, edge_index, e, reverse=reverse)
        torch.testing.assert_close(streamed, reference.detach(), atol=1e-6, rtol=1e-5)
        assert torch.equal(streamed[24:], torch.zeros_like(streamed[24:]))
    model = make_model("cifar_resnet20")
    graph = model_to_graph(model, example_input(32))
    metanetwork = MetaPrunerModel(MetaPrunerConfig(hidden_size=8, num_layers=2, aggregations=aggregations,
                                                   init_identity=False, edge_chunk_size=3000))
    reference = metanetwork(graph)
    with torch.no_grad():
        streamed = metanetwork(graph)
    for kind, edges in reference.edges.items():
        assert not torch.equal(edges.features, graph.edges[kind].features)  # the metanetwork really edits
        torch.testing.assert_close(streamed.edges[kind].features, edges.features.detach(), atol=1e-6, rtol=1e-5)


def test_edge_chunking_does_not_change_results():
    model = make_model("cifar_resnet20")
    x = example_input(32)
    small = MetaPrunerModel(MetaPrunerConfig(hidden_size=8, num_layers=2, edge_chunk_size=1000)).eval()
    big = MetaPrunerModel(MetaPrunerConfig(hidden_size=8, num_layers=2, edge_chunk_size=10**7)).eval()
    big.load_state_dict(small.state_dict())
    a, b = small.transform(model, x), big.transform(model, x)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(va, vb, atol=1e-6, rtol=1e-5, msg=k)
    graph = model_to_graph(model, x)  # the differentiable path chunks too
    chunked = MetaPrunerModel(MetaPrunerConfig.for_graphs([graph], hidden_size=8, num_layers=2,
                                                          edge_chunk_size=1000))
    out = chunked(graph)
    loss = sum(e.features.sum() for e in out.edges.values()) + sum(r.features.sum() for r in out.records.values())
    loss.backward()
    assert all(p.grad is not None for p in chunked.parameters())
