"""The latency cost model: a per-layer lookup table, and pruning that meets a latency target."""
import pytest
import torch
from torch import nn

import hf_metaprune as hm
from hf_metaprune.pruning.cost import count_macs

from conftest import example_input, make_model


class BigAndTiny(nn.Module):
    """A 1x1 convolution on 4 channels and a 3x3 one on 64: two orders of magnitude apart in MACs."""

    def __init__(self):
        super().__init__()
        self.tiny, self.big = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 64, 3, padding=1)
        self.bigger = nn.Conv2d(64, 64, 3, padding=1)
        self.head = nn.Linear(64, 2)

    def forward(self, x):
        return self.head(self.bigger(self.big(self.tiny(x).relu()).relu()).relu().mean((2, 3)))


def _proportional_table(model: nn.Module, x: torch.Tensor, other: float = 0.0) -> hm.LatencyTable:
    """A table whose every layer costs exactly its MACs (seconds = MACs · 1e-9) at every grid point."""
    table = hm.LatencyTable.measure(model, x, ratios=(0.5, 1.0), runs=1, warmup=0)
    _, per_module = count_macs(model, x)
    for name, entry in table.layers.items():
        full = per_module[model.get_submodule(name)] * 1e-9
        entry["grid"] = [[full * i * o / (entry["in_grid"][-1] * entry["out_grid"][-1]) if not entry["depthwise"]
                          else full * o / entry["out_grid"][-1] for o in entry["out_grid"]] for i in entry["in_grid"]]
    table.seconds_per_mac, table.other_seconds = 1e-9, other
    return table


def test_table_covers_every_layer_and_its_estimate_of_the_measured_model_is_the_measured_time(tmp_path):
    model, x = BigAndTiny().eval(), torch.randn(4, 3, 16, 16)
    table = hm.LatencyTable.measure(model, x, ratios=(0.25, 0.5, 1.0), runs=2, warmup=1)
    assert set(table.layers) == {"tiny", "big", "bigger", "head"} and table.batch_size == 4
    big = table.layers["bigger"]
    assert big["in_grid"] == [16, 32, 64] and big["out_grid"] == [16, 32, 64] and len(big["grid"]) == 3
    assert table.layers["tiny"]["in_grid"] == [1, 2, 3]  # round(3 · ratio), at least one channel
    assert all(s > 0 for entry in table.layers.values() for row in entry["grid"] for s in row)
    assert table.estimate(model, x) == pytest.approx(table.full_seconds, rel=1e-6)
    assert table.estimate(model, x[:1]) == pytest.approx(table.full_seconds, rel=1e-6)  # any batch: the table's
    assert table.layer_seconds("bigger", 64, 64) == big["grid"][-1][-1]  # grid points are exact
    mid = table.layer_seconds("bigger", 64, 48)  # between grid points: linear
    assert mid == pytest.approx((big["grid"][-1][1] + big["grid"][-1][2]) / 2)
    table.save(tmp_path / "table.json")
    assert hm.LatencyTable.load(tmp_path / "table.json") == table
    assert model.tiny.weight.is_contiguous()  # the caller's model keeps its memory format


@pytest.mark.parametrize("whole_vs_parts", [0.5, 3.0])
def test_the_estimate_of_the_measured_model_is_its_time_whether_the_parts_add_up_to_more_or_less(
        monkeypatch, whole_vs_parts):
    """Layers timed alone can add up to more than the whole model (per-call overhead, cold caches): they are scaled
    to it, keeping their ratios; when they add up to less, the rest is ``other_seconds``."""
    from hf_metaprune.pruning import latency

    model, x = BigAndTiny().eval(), torch.randn(4, 3, 16, 16)
    layer_seconds = {"tiny": 1e-4, "big": 2e-4, "bigger": 4e-4, "head": 1e-4}  # the parts: 8e-4 s at full width
    by_module = {model.get_submodule(n): s for n, s in layer_seconds.items()}

    def fake_median(module, inputs, runs, warmup, channels_last):  # full-width layers and the whole model only
        return whole_vs_parts * 8e-4 if module is model else by_module[module]

    monkeypatch.setattr(latency, "_median_seconds", fake_median)
    monkeypatch.setattr(latency, "_time_layer", lambda module, shape, *args: {
        "in_grid": [latency._in_channels(module)], "out_grid": [latency._out_channels(module)],
        "grid": [[fake_median(module, None, 1, 0, True)]], "depthwise": False})
    table = hm.LatencyTable.measure(model, x, ratios=(1.0,), runs=1, warmup=0)
    assert table.full_seconds == pytest.approx(whole_vs_parts * 8e-4)
    assert table.estimate(model, x) == pytest.approx(table.full_seconds, rel=1e-9)
    scale = min(whole_vs_parts, 1.0)
    assert {n: e["grid"][0][0] for n, e in table.layers.items()} == pytest.approx(
        {n: s * scale for n, s in layer_seconds.items()}, rel=1e-9)
    assert table.other_seconds == pytest.approx(max(whole_vs_parts - 1.0, 0.0) * 8e-4, abs=1e-12)


def test_the_table_ranks_layers_as_a_direct_timing_does():
    model, x = BigAndTiny().eval(), torch.randn(8, 3, 32, 32)
    table = hm.LatencyTable.measure(model, x, ratios=(1.0,), runs=5, warmup=1)
    inputs = {"tiny": x, "big": torch.randn(8, 4, 32, 32), "bigger": torch.randn(8, 64, 32, 32)}
    direct = {name: hm.measure_latency({name: model.get_submodule(name)}, inputs[name], runs=5,
                                       channels_last=True)[name] for name in inputs}
    by_table = sorted(inputs, key=lambda n: table.layers[n]["grid"][-1][-1])
    assert by_table == sorted(inputs, key=direct.get) == ["tiny", "big", "bigger"]  # ~7 M vs 150 M MACs


def test_a_table_proportional_to_macs_prunes_exactly_as_macs_do():
    model, x = make_model("cifar_resnet20"), example_input(32)
    table = _proportional_table(model, x)
    by_macs, by_latency = hm.prune_to_speedup(model, x, 2.0), hm.prune_to_speedup(model, x, 2.0,
                                                                                 latency_table=table)
    assert by_latency.widths == by_macs.widths
    assert by_latency.latency_speed_up == pytest.approx(by_macs.speed_up, rel=1e-6)
    assert by_macs.latency_speed_up is None


def test_a_latency_target_is_met_in_estimated_latency_not_in_macs():
    model, x = make_model("cifar_resnet20"), example_input(32)
    table = _proportional_table(model, x, other=0.0)
    for name, entry in table.layers.items():  # the first stage costs 4x its MACs: latency falls slower there
        if name.startswith(("conv1", "layer1")):
            entry["grid"] = [[4 * s for s in row] for row in entry["grid"]]
    result = hm.prune_to_speedup(model, x, 2.0, latency_table=table)
    assert 2.0 <= result.latency_speed_up <= 2.0 * 1.01 + 0.05
    assert result.latency_speed_up == pytest.approx(table.estimate(model, x) / table.estimate(result.model, x),
                                                    rel=1e-6)
    assert result.speed_up != pytest.approx(result.latency_speed_up, rel=1e-3)
    assert "latency_speed_up=" in repr(result)


def test_an_unreachable_latency_target_or_another_models_table_is_refused():
    model, x = make_model("cifar_resnet20"), example_input(32)
    table = _proportional_table(model, x)
    for entry in table.layers.values():  # latency that no width changes (a machine where only launches count)
        entry["grid"] = [[entry["grid"][-1][-1]] * len(row) for row in entry["grid"]]
    with pytest.raises(ValueError, match="cannot reach a speed-up of 1.5x in estimated latency: stopped at 1.000x"):
        hm.prune_to_speedup(model, x, 1.5, latency_table=table)
    other_table = _proportional_table(BigAndTiny().eval(), torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match="latency_table has no entry for"):
        hm.prune_to_speedup(model, x, 2.0, latency_table=other_table)
    with pytest.raises(TypeError, match="latency_table must be a LatencyTable"):
        hm.prune_to_speedup(model, x, 2.0, latency_table={"conv1": 1.0})
    with pytest.raises(ValueError, match="ratios must be numbers in"):
        hm.LatencyTable.measure(model, x, ratios=(0.5,))


def test_loading_a_missing_or_foreign_file_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="no file at"):
        hm.LatencyTable.load(tmp_path / "nothing.json")
    (tmp_path / "bad.json").write_text('{"layers": 1}')
    with pytest.raises(ValueError, match="is not a saved latency table"):
        hm.LatencyTable.load(tmp_path / "bad.json")


def _first_stage_slow(model: nn.Module, x: torch.Tensor) -> hm.LatencyTable:
    """A hand-made table: every layer costs its MACs, the stem and first stage 4x theirs (latency != MACs)."""
    table = _proportional_table(model, x)
    for name, entry in table.layers.items():
        if name.startswith(("conv1", "layer1")):
            entry["grid"] = [[4 * s for s in row] for row in entry["grid"]]
    return table


def test_channel_groups_latency_matches_the_table_without_building_a_model():
    model, x = make_model("cifar_resnet20"), example_input(32)
    groups = hm.ChannelGroups.from_model(model, x)
    removed = groups.removed_for_widths(groups.uniform_widths(2.0))
    proportional = _proportional_table(model, x)  # seconds = MACs · 1e-9: the estimate is the MACs count
    assert groups.latency(removed, proportional) == pytest.approx(groups.macs(removed) * 1e-9, rel=1e-6)
    table = _first_stage_slow(model, x)
    pruned = hm.prune_to_widths(model, x, groups.uniform_widths(2.0)).model
    assert groups.latency(removed, table) == pytest.approx(table.estimate(pruned, x), rel=1e-6)
    assert groups.latency(None, table) == pytest.approx(table.estimate(model, x), rel=1e-6)


def test_every_search_meets_a_latency_constraint(cifar_small, monkeypatch):
    from hf_metaprune.methods.pruningnet.search import evolutionary_search

    model, x = make_model("cifar_resnet20"), example_input(32)
    table = _first_stage_slow(model, x)
    pn = hm.PruningNetModel(hm.PruningNetConfig(base_architecture="cifar_resnet20", base_model_kwargs={
        "num_classes": 10}, hidden_size=2)).eval()
    pn.network.load_state_dict(model.state_dict())
    monkeypatch.setattr(pn, "evaluate_gene", lambda gene, recal, evals: sum(gene) / 1e3)
    found = evolutionary_search(pn, cifar_small, 2.0, window=0.05, num_iterations=2, population=6, top_k=6,
                                num_parents=2, mutations=3, crossovers=3, recalibration_samples=32, eval_samples=32,
                                disable_tqdm=True, latency_table=table)
    assert 2.0 <= found.latency_speed_up <= 2.0 / 0.95
    assert found.latency_speed_up == pytest.approx(table.estimate(model, x) / table.estimate(found.result.model, x),
                                                   rel=1e-6)
    scores = torch.arange(pn.groups.num_units, dtype=torch.float32)  # STAMP's removal by score, in latency
    removed = pn.groups.removed_for_speedup(scores, 2.0, latency_table=table)
    assert pn.groups.latency(None, table) / pn.groups.latency(removed, table) >= 2.0
    assert pn.groups.macs() / pn.groups.macs(removed) != pytest.approx(2.0, rel=0.02)


def test_a_depthwise_convolution_is_timed_along_its_one_width():
    model = nn.Sequential(nn.Conv2d(3, 16, 1), nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.Conv2d(16, 8, 1)).eval()
    x = torch.randn(2, 3, 8, 8)
    table = _proportional_table(model, x)
    entry = table.layers["1"]
    assert entry["depthwise"] and entry["in_grid"] == [16] and entry["out_grid"] == [8, 16] and len(entry["grid"]) == 1
    assert table.layer_seconds("1", 4, 4) == pytest.approx(entry["grid"][0][-1] / 4)  # linear in its width
    groups = hm.ChannelGroups.from_model(model, x)
    removed = groups.removed_for_widths(groups.uniform_widths(1.5))
    pruned = hm.prune_to_widths(model, x, groups.uniform_widths(1.5)).model
    assert groups.latency(removed, table) == pytest.approx(table.estimate(pruned, x), rel=1e-6)
