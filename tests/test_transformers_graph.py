"""Graph adapter for 🤗 ViT / BERT: exact round trip, full coverage, the node sets the method relies on."""
import pytest
import torch
from transformers import (AlbertConfig, AlbertForSequenceClassification, BertConfig, BertForSequenceClassification,
                          Dinov2Config, Dinov2ForImageClassification, Dinov2Model)

import hf_metaprune as hm
from hf_metaprune.graph import ROLE_INPUT, find_attention_modules
from test_transformers_pruning import BERT_INPUT, VIT_INPUT, logits, tiny_bert, tiny_vit



def tiny_dinov2_classifier(seed: int = 0) -> Dinov2ForImageClassification:
    """Its classifier reads [class token, mean of the patch tokens]: the hidden channels twice, side by side."""
    torch.manual_seed(seed)
    config = Dinov2Config(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          mlp_ratio=2, num_labels=3)
    return Dinov2ForImageClassification(config).eval()


def tiny_albert(seed: int = 0) -> AlbertForSequenceClassification:
    """A factorised embedding (16 wide, projected up to the 32-wide hidden stream) and one layer shared by both
    passes."""
    torch.manual_seed(seed)
    config = AlbertConfig(vocab_size=100, embedding_size=16, hidden_size=32, num_hidden_layers=2,
                          num_attention_heads=4, intermediate_size=64, max_position_embeddings=64, num_labels=3)
    return AlbertForSequenceClassification(config).eval()


MODELS = [(tiny_vit, VIT_INPUT), (tiny_bert, BERT_INPUT), (tiny_dinov2_classifier, VIT_INPUT),
          (tiny_albert, BERT_INPUT)]
IDS = ["vit", "bert", "dinov2-classifier", "albert"]


def perturbed(make):
    """Non-trivial LayerNorm and bias values, so that every record column is checked for real."""
    model = make()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("bias", "LayerNorm.weight")) or "layernorm" in name:
                p.normal_(0, 0.5)
    return model


def nodes_of(graph: hm.NetworkGraph, name: str) -> torch.Tensor:
    """Destination nodes of weight ``name`` (its output channels) or the nodes of record ``name``."""
    slot = next(s for s in graph.slots if s.name == name)
    if slot.column is None:
        return graph.edges[slot.kind].index[1, slot.start:slot.end]
    return graph.records[slot.kind].node[slot.start:slot.end]


def sources_of(graph: hm.NetworkGraph, name: str) -> torch.Tensor:
    slot = next(s for s in graph.slots if s.name == name)
    return graph.edges[slot.kind].index[0, slot.start:slot.end]


def sets(graph, nodes: torch.Tensor) -> set[str]:
    return {graph.set_names[i] for i in graph.node_set[nodes].unique().tolist()}


@pytest.mark.parametrize("make, x", MODELS, ids=IDS)
def test_round_trip_is_bit_exact_with_full_coverage(make, x):
    model = perturbed(make)
    graph = hm.model_to_graph(model, x)
    state = model.state_dict()
    covered = [s.name for s in graph.slots] + list(graph.static_buffers)
    assert sorted(covered) == sorted(state)  # every parameter and buffer, each exactly once
    assert graph.num_covered_parameters == sum(p.numel() for p in model.parameters())
    rebuilt = hm.graph_to_model(graph, make(seed=1))  # template with other weights: nothing copied through
    for k, v in rebuilt.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert torch.equal(logits(rebuilt, x), logits(model, x))


def test_an_unused_token_is_in_the_graph_on_the_channels_of_its_sibling():
    """Dinov2's mask_token is unused in a plain forward, so tracing cannot see it; it lives on the channels of the
    class token beside it, is rebuilt exactly from the graph, and so are its layer-scale vectors."""
    def make(seed=0):
        torch.manual_seed(seed)
        config = Dinov2Config(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                              num_attention_heads=4, mlp_ratio=2)
        model = Dinov2Model(config).eval()
        with torch.no_grad():
            model.embeddings.mask_token.normal_()
            for layer in model.encoder.layer:
                layer.layer_scale1.lambda1.uniform_(0.5, 1.5)
        return model

    model, x = make(), torch.randn(2, 3, 32, 32)
    graph = hm.model_to_graph(model, x)
    assert torch.equal(nodes_of(graph, "embeddings.mask_token"), nodes_of(graph, "embeddings.cls_token"))
    rebuilt = hm.graph_to_model(graph, make(seed=1))
    for k, v in rebuilt.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, ::3] = True  # the mask token is used when patches are masked
    with torch.no_grad():
        assert torch.equal(rebuilt(x, bool_masked_pos=mask).last_hidden_state,
                           model(x, bool_masked_pos=mask).last_hidden_state)


def test_a_classifier_reading_the_same_channels_twice_connects_both_halves_to_them():
    graph = hm.model_to_graph(tiny_dinov2_classifier(), VIT_INPUT)
    sources = sources_of(graph, "classifier.weight").view(3, 64)  # one edge per weight entry
    assert torch.equal(sources[:, :32], sources[:, 32:])  # class token half and mean half: the same 32 channels
    assert torch.equal(sources[0, :32], nodes_of(graph, "dinov2.layernorm.weight"))


def test_a_factorised_embedding_is_its_own_node_set():
    graph = hm.model_to_graph(tiny_albert(), BERT_INPUT)
    embedding = nodes_of(graph, "albert.embeddings.word_embeddings.weight").unique()
    assert embedding.numel() == 16
    assert torch.equal(nodes_of(graph, "albert.embeddings.LayerNorm.weight").sort().values, embedding)
    assert set(sources_of(graph, "albert.encoder.embedding_hidden_mapping_in.weight").tolist()) == \
        set(embedding.tolist())
    hidden = nodes_of(graph, "albert.encoder.embedding_hidden_mapping_in.weight").unique()
    assert hidden.numel() == 32 and not set(hidden.tolist()) & set(embedding.tolist())


@pytest.mark.parametrize("library", ["🤗", "timm"])
def test_swin_patch_merging_reads_four_copies_of_the_stage_channels(library):
    """Patch merging concatenates four strided neighbours: its norm and reduction read the previous stage's 16
    residual channels four times, position-major. A metanetwork then reads, transforms and prunes Swin."""
    import timm
    from transformers import SwinConfig, SwinForImageClassification
    torch.manual_seed(0)
    if library == "timm":
        model, prefix = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=3, img_size=32,
                                          patch_size=2, window_size=4, embed_dim=16, depths=(1, 1),
                                          num_heads=(2, 4)).eval(), "layers.1.downsample"
        stage = "layers.0.blocks.0.mlp.fc2.weight"
    else:
        model = SwinForImageClassification(SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1],
                                                      num_heads=[2, 4], window_size=4, num_labels=3)).eval()
        prefix, stage = "swin.encoder.layers.0.downsample", "swin.encoder.layers.0.blocks.0.mlp.fc2.weight"
    graph = hm.model_to_graph(model, VIT_INPUT[:1])
    residual = nodes_of(graph, stage).view(16, -1)[:, 0]
    assert torch.equal(nodes_of(graph, f"{prefix}.norm.weight"), residual.repeat(4))
    assert torch.equal(sources_of(graph, f"{prefix}.reduction.weight").view(32, 64)[0], residual.repeat(4))
    metapruner = hm.MetaPrunerModel(hm.MetaPrunerConfig.for_graphs([graph], hidden_size=8, num_layers=2))
    out = lambda m: getattr(m(VIT_INPUT), "logits", m(VIT_INPUT))  # noqa: E731
    with torch.no_grad():
        assert torch.equal(out(metapruner.transform(model, VIT_INPUT[:1])), out(model))
    result = metapruner.prune(model, VIT_INPUT[:1], speed_up=2.0)
    assert result.speed_up >= 2.0 and sum(a.num_heads for a in find_attention_modules(result.model)) < 6


def test_vit_node_sets():
    model = tiny_vit()
    g = hm.model_to_graph(model, VIT_INPUT)
    # one residual stream shared by every block, the embeddings and the classifier's inputs
    hidden = [nodes_of(g, "vit.embeddings.patch_embeddings.projection.weight").unique()]
    for i in range(2):
        for name in (f"vit.layers.{i}.attention.o_proj.weight", f"vit.layers.{i}.mlp.fc2.weight"):
            hidden.append(nodes_of(g, name).unique())
        hidden.append(nodes_of(g, f"vit.layers.{i}.layernorm_before.weight"))
    hidden.append(sources_of(g, "classifier.weight").unique())
    assert all(torch.equal(h, hidden[0]) for h in hidden) and hidden[0].numel() == 32
    for i in range(2):
        attn = f"vit.layers.{i}.attention"
        q, k, v = (nodes_of(g, f"{attn}.{p}_proj.weight").unique() for p in "qkv")
        o_in = sources_of(g, f"{attn}.o_proj.weight").unique()
        assert torch.equal(q, k) and torch.equal(v, o_in) and not set(q.tolist()) & set(v.tolist())
        assert sets(g, q) == {f"{attn}:query_key"} and sets(g, v) == {f"{attn}:value"}
        assert q.numel() == v.numel() == 32  # 4 heads x 8, kept in head order
        fc1 = nodes_of(g, f"vit.layers.{i}.mlp.fc1.weight").unique()
        assert torch.equal(fc1, sources_of(g, f"vit.layers.{i}.mlp.fc2.weight").unique()) and fc1.numel() == 64
    # class token and position embeddings: input nodes with one edge to every hidden channel
    for name, rows in (("vit.embeddings.cls_token", 1), ("vit.embeddings.position_embeddings", 65)):
        src = sources_of(g, name)
        assert (g.node_role[src] == ROLE_INPUT).all() and src.unique().numel() == rows
        assert torch.equal(nodes_of(g, name).unique(), hidden[0])
    assert torch.equal(g.node_role[sources_of(g, "vit.embeddings.patch_embeddings.projection.weight").unique()],
                       torch.full((3,), ROLE_INPUT))


def test_bert_embeddings_and_buffers():
    model = tiny_bert()
    g = hm.model_to_graph(model, BERT_INPUT)
    hidden = nodes_of(g, "bert.embeddings.LayerNorm.weight")
    for name, rows in (("bert.embeddings.word_embeddings.weight", 100),
                       ("bert.embeddings.position_embeddings.weight", 64),
                       ("bert.embeddings.token_type_embeddings.weight", 2)):
        assert sources_of(g, name).unique().numel() == rows
        assert torch.equal(nodes_of(g, name).unique(), hidden.sort().values)
    assert g.edges["embedding"].features.shape == (166 * 32, 1)
    assert {a.path for a in find_attention_modules(model)} == {f"bert.encoder.layer.{i}.attention.self"
                                                               for i in range(2)}


def test_an_untrained_metanetwork_is_the_identity_and_prunes_heads():
    for make, x in MODELS:
        model = make()
        g = hm.model_to_graph(model, x)
        metapruner = hm.MetaPrunerModel(hm.MetaPrunerConfig.for_graphs([g], hidden_size=8, num_layers=2))
        assert "embedding" in metapruner.config.edge_kinds
        transformed = metapruner.transform(model, x)
        assert torch.equal(logits(transformed, x), logits(model, x))
        result = metapruner.prune(model, x, speed_up=1.5)
        assert result.speed_up >= 1.5 and result.model.config.pruned_attention_heads


def test_cross_attention_models_are_refused():
    model = tiny_bert(is_decoder=True, add_cross_attention=True)
    with pytest.raises(hm.UnsupportedModuleError, match="cross-attention"):
        hm.model_to_graph(model, BERT_INPUT)


def test_integer_parameters_are_reported():
    model = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=32,
                                                     max_position_embeddings=32, num_labels=2)).eval()
    model.bert.embeddings.register_parameter("ids", torch.nn.Parameter(torch.ones(3, dtype=torch.int64),
                                                                       requires_grad=False))
    with pytest.raises(TypeError, match="floating-point"):
        hm.model_to_graph(model, {"input_ids": torch.randint(0, 50, (1, 8))})
