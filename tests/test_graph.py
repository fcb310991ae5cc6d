import pytest
import torch
from torch import nn

from hf_metaprune import UnsupportedModuleError, graph_to_model, model_to_graph
from hf_metaprune.graph import ROLE_INPUT, ROLE_OUTPUT

from conftest import CNNS, example_input, make_model


def _assert_same_state(a: nn.Module, b: nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("name,res", CNNS)
def test_round_trip_is_bit_exact_and_covers_every_parameter(name, res):
    model = make_model(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    graph = model_to_graph(model, example_input(res))
    rebuilt = graph_to_model(graph, model)
    assert rebuilt is not model
    _assert_same_state(model, rebuilt)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # input untouched
    assert graph.num_covered_parameters == sum(p.numel() for p in model.parameters())
    # the graph really holds the weights: each parameter scalar is exactly once in the features
    n_edge = sum(e.features.numel() for e in graph.edges.values())
    n_rec_param = sum(s.end - s.start for s in graph.slots if s.column is not None and s.is_parameter)
    assert n_edge + n_rec_param == graph.num_covered_parameters


@pytest.mark.parametrize("name,res", [("cifar_resnet20", 32), ("convnext_atto", 64), ("efficientnet_b0", 64),
                                      ("regnetx_002", 64), ("mobilenetv2_100", 64)])
def test_perturbing_every_feature_changes_every_parameter(name, res):
    model = make_model(name)
    graph = model_to_graph(model, example_input(res))
    shifted = graph.with_features({k: e.features + 1.0 for k, e in graph.edges.items()},
                                  {k: r.features + 1.0 for k, r in graph.records.items()})
    new = graph_to_model(shifted, model)
    new_state = new.state_dict()
    for k, v in model.state_dict().items():
        if k.endswith("num_batches_tracked"):
            assert torch.equal(v, new_state[k])
        else:
            assert torch.equal(new_state[k], v + 1.0), k  # every entry, including running stats


def test_one_edge_feature_changes_exactly_one_weight_entry():
    model = make_model("cifar_resnet20")
    graph = model_to_graph(model, example_input(32))
    feats = graph.edges["3x3"].features.clone()
    feats[1234, 5] += 3.0
    new = graph_to_model(graph.with_features({"3x3": feats}, {}), model)
    changed = 0
    for (k, a), b in zip(model.state_dict().items(), new.state_dict().values()):
        diff = (a != b).sum().item()
        changed += diff
    assert changed == 1


def test_residual_channels_are_one_node_set_and_roles():
    model = make_model("cifar_resnet20")
    graph = model_to_graph(model, example_input(32))

    def nodes(name, col=None):
        slot = next(s for s in graph.slots if s.name == name)
        return graph.records[slot.kind].node[slot.start:slot.end]

    stem = nodes("bn1.weight")
    assert torch.equal(stem, nodes("layer1.0.bn2.weight"))
    assert torch.equal(stem, nodes("layer1.2.bn2.weight"))
    assert not torch.equal(nodes("layer1.0.bn1.weight"), stem)  # the inner channels are a set of their own
    assert torch.equal(nodes("layer2.0.downsample.1.weight"), nodes("layer2.1.bn2.weight"))
    assert (graph.node_role == ROLE_INPUT).sum() == 3  # RGB
    assert (graph.node_role == ROLE_OUTPUT).sum() == 10  # classes
    # every weight of conv2 connects the inner set to the residual stream
    slot = next(s for s in graph.slots if s.name == "layer1.0.conv2.weight")
    index = graph.edges["3x3"].index[:, slot.start:slot.end]
    assert set(index[1].tolist()) == set(stem.tolist())
    assert set(index[0].tolist()) == set(nodes("layer1.0.bn1.weight").tolist())


def test_depthwise_and_grouped_convs_connect_only_within_groups():
    model = make_model("mobilenetv2_100")
    graph = model_to_graph(model, example_input(64))
    slot = next(s for s in graph.slots if s.name == "blocks.1.0.conv_dw.weight")
    index = graph.edges[slot.kind].index[:, slot.start:slot.end]
    assert torch.equal(index[0], index[1])  # depthwise: channel c only feeds channel c

    model = make_model("regnetx_002")
    conv = model.s1.b1.conv2.conv
    assert 1 < conv.groups < conv.out_channels
    graph = model_to_graph(model, example_input(64))
    slot = next(s for s in graph.slots if s.name == "s1.b1.conv2.conv.weight")
    index = graph.edges["3x3"].index[:, slot.start:slot.end]
    assert index.shape[1] == conv.out_channels * conv.in_channels // conv.groups
    gw = conv.out_channels // conv.groups
    src_rank = index[0] - index[0].min()
    dst_rank = index[1] - index[1].min()
    assert torch.equal(src_rank // gw, dst_rank // gw)


def test_flatten_into_linear_is_one_edge_per_channel():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    graph = model_to_graph(model, torch.randn(1, 3, 8, 8))
    assert graph.edges["flat36"].features.shape == (4 * 5, 36)
    _assert_same_state(model, graph_to_model(graph, model))


class _WithLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.rnn = nn.LSTM(4, 4, batch_first=True)

    def forward(self, x):
        x = self.conv(x).flatten(2).transpose(1, 2)
        return self.rnn(x)[0]


@pytest.mark.parametrize("model,path,type_name", [
    (nn.Sequential(nn.Conv2d(3, 8, 3), nn.PReLU(), nn.Conv2d(8, 4, 1)), "1", "PReLU"),
    (nn.Sequential(nn.Conv2d(3, 8, 3), nn.ConvTranspose2d(8, 4, 2)), "1", "ConvTranspose2d"),
    (_WithLSTM(), "rnn", "LSTM"),
])
def test_unsupported_modules_are_named(model, path, type_name):
    with pytest.raises(UnsupportedModuleError) as err:
        model_to_graph(model, torch.randn(1, 3, 8, 8))
    assert err.value.path == path and err.value.module_type == type_name
    assert f"'{path}'" in str(err.value) and type_name in str(err.value)


def test_non_float_model_is_rejected():
    model = nn.Sequential(nn.Conv2d(3, 4, 3))
    model[0].weight = nn.Parameter(model[0].weight.detach().to(torch.int8), requires_grad=False)
    with pytest.raises(TypeError, match="floating-point"):
        model_to_graph(model, torch.randn(1, 3, 8, 8))


def test_graph_of_another_architecture_is_rejected():
    graph = model_to_graph(make_model("cifar_resnet20"), example_input(32))
    with pytest.raises(ValueError, match="does not match the template"):
        graph_to_model(graph, make_model("cifar_resnet20", num_classes=100))
