import pytest
import torch
from torch import nn

from hf_metaprune import count_macs_and_params, load_pruned, prune_to_speedup, save_pruned
from hf_metaprune.pruning import module_widths

from conftest import CNNS, example_input, make_model

FAST_CNNS = [c for c in CNNS if c[0] not in ("vgg11_bn", "resnet50")]


@pytest.mark.parametrize("name,res", FAST_CNNS)
def test_prune_to_speedup_hits_target_within_one_percent(name, res):
    model = make_model(name)
    x = example_input(res)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = prune_to_speedup(model, x, 2.0)
    assert 2.0 <= result.speed_up <= 2.0 * 1.01
    macs, params = count_macs_and_params(result.model, x)
    assert macs == result.macs_after and params == result.params_after < result.params_before
    assert result.model(x).shape == (1, 10)  # output classes are never pruned
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # input untouched


def test_group_l2_prunes_the_weakest_channels():
    model = make_model("cifar_resnet20")
    with torch.no_grad():  # make 8 of layer1.0's inner channels negligible
        model.layer1[0].conv1.weight[:8] *= 1e-4
        model.layer1[0].bn1.weight[:8] *= 1e-4
    result = prune_to_speedup(model, example_input(32), 1.1)
    assert result.model.layer1[0].conv1.out_channels <= 8


def test_importance_choices_and_errors():
    model = make_model("cifar_resnet20")
    x = example_input(32)
    a = prune_to_speedup(model, x, 1.5, importance="random")
    assert 1.5 <= a.speed_up <= 1.515
    with pytest.raises(ValueError, match="unknown importance"):
        prune_to_speedup(model, x, 1.5, importance="taylor-magic")
    for bad in (1.0, 0.5, -2):
        with pytest.raises(ValueError, match=r"speed_up must be in \(1.0, inf\]"):
            prune_to_speedup(model, x, bad)
    with pytest.raises(ValueError, match="cannot reach a speed-up of 500"):
        prune_to_speedup(model, x, 500.0)


def test_ignored_layers_keep_their_width():
    model = make_model("cifar_resnet20")
    result = prune_to_speedup(model, example_input(32), 2.0, ignored_layers=[model.layer3[0].conv1])
    assert result.model.layer3[0].conv1.out_channels == 64


@pytest.mark.parametrize("name,res", [("cifar_resnet56", 32), ("regnetx_002", 64), ("convnext_atto", 64),
                                      ("mobilenetv2_100", 64)])
def test_pruned_model_reloads_from_safetensors_and_json(tmp_path, name, res):
    model = make_model(name)
    x = example_input(res)
    pruned = prune_to_speedup(model, x, 2.0).model
    save_pruned(pruned, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "pruned_config.json"]
    loaded = load_pruned(tmp_path)
    for (k, a), b in zip(pruned.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
    assert torch.equal(pruned.eval()(x), loaded(x))


def test_load_pruned_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="save_pruned"):
        load_pruned(tmp_path)
    model = make_model("cifar_resnet20")
    pruned = prune_to_speedup(model, example_input(32), 2.0).model
    save_pruned(pruned, tmp_path / "a")
    save_pruned(prune_to_speedup(model, example_input(32), 3.0).model, tmp_path / "b")
    (tmp_path / "a" / "model.safetensors").write_bytes((tmp_path / "b" / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="do not match"):
        load_pruned(tmp_path / "a")
    (tmp_path / "b" / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_pruned(tmp_path / "b")
    with pytest.raises(ValueError, match="architecture"):
        save_pruned(nn.Sequential(nn.Linear(2, 2)), tmp_path / "c")


def test_measure_latency_times_every_model_and_leaves_them_as_they_were():
    from hf_metaprune.pruning import measure_latency

    model = make_model("cifar_resnet20")
    pruned = prune_to_speedup(model, example_input(32), 2.0).model
    x = torch.randn(8, 3, 32, 32)
    latency = measure_latency({"original": model, "pruned": pruned}, x, runs=3, warmup=1, channels_last=True)
    assert set(latency) == {"original", "pruned"} and all(t > 0 for t in latency.values())
    assert model.conv1.weight.is_contiguous() and pruned.conv1.weight.is_contiguous()  # copies were converted


def test_round_to_keeps_every_pruned_width_a_multiple():
    model = make_model("cifar_resnet20")
    x = example_input(32)
    with torch.no_grad():  # 12 of layer1.0's 16 inner channels negligible: without rounding 4 would be left
        model.layer1[0].conv1.weight[4:] *= 1e-4
        model.layer1[0].bn1.weight[4:] *= 1e-4
    result = prune_to_speedup(model, x, 2.0, round_to=8)
    assert result.speed_up >= 2.0
    widths = {name: w["out"] for name, w in module_widths(result.model).items() if name != "fc"}
    assert all(w % 8 == 0 for w in widths.values()), widths
    assert widths["layer1.0.conv1"] == 8  # the strongest 8 kept, not 4
    kept = result.model.layer1[0].conv1.weight
    assert torch.equal(kept[:4], model.layer1[0].conv1.weight[:4])  # the 4 strong channels are among them
    assert prune_to_speedup(model, x, 2.0).model.layer1[0].conv1.out_channels <= 4


class TwelveChannels(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2, self.head = nn.Conv2d(3, 12, 3), nn.Conv2d(12, 20, 3), nn.Linear(20, 2)

    def forward(self, x):
        return self.head(self.conv2(self.conv1(x).relu()).relu().mean((2, 3)))


def test_round_to_trims_an_odd_width_to_a_multiple_first():
    model = TwelveChannels().eval()
    result = prune_to_speedup(model, torch.randn(1, 3, 16, 16), 1.4, round_to=8)
    assert (result.model.conv1.out_channels, result.model.conv2.out_channels) in {(8, 16), (8, 20), (12, 16)}
    assert result.speed_up >= 1.4


@pytest.mark.parametrize("value", [0, -8, 2.5, True, "8"])
def test_round_to_must_be_a_positive_integer(value):
    with pytest.raises(ValueError, match="round_to must be a positive integer"):
        prune_to_speedup(TwelveChannels().eval(), torch.randn(1, 3, 16, 16), 1.4, round_to=value)
