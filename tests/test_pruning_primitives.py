"""Shared pruning primitives: coupled groups and widths, prune_to_widths, the width-vector MACs count, BN
recalibration."""
import pytest
import torch
from torch import nn

import hf_metaprune as hm
from hf_metaprune.pruning import recalibrate_batchnorm
from hf_metaprune.training import evaluate_accuracy

from conftest import example_input, make_model
from test_pruning import TwelveChannels


def _conv_linear_macs(model: nn.Module, x: torch.Tensor) -> float:
    """An independent count: k·k·(C_in/groups)·C_out·H_out·W_out per conv, in·out per linear (from output shapes)."""
    total = []

    def hook(m, _inputs, out):
        if isinstance(m, nn.Conv2d):
            total.append(m.kernel_size[0] * m.kernel_size[1] * m.in_channels // m.groups * out.numel())
        else:
            total.append(m.in_features * out.numel())

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return float(sum(total))


def test_groups_give_widths_and_the_width_vector_macs_match_an_independent_count():
    model, x = make_model("cifar_resnet20"), example_input(32)
    groups = hm.ChannelGroups.from_model(model, x)
    # stem + stage 1 (tied by identity shortcuts), 9 block-inner convs, stages 2 and 3 (projection shortcuts)
    assert sorted(groups.group_sizes) == sorted([16] * 4 + [32] * 4 + [64] * 4)
    assert groups.macs() == _conv_linear_macs(model, x)
    for ratio in (1.0, 0.5, 0.25):
        widths = groups.widths_for_ratios([ratio] * groups.num_groups)
        assert widths == [max(1, int(s * ratio)) for s in groups.group_sizes]
        pruned = hm.prune_to_widths(model, x, widths).model
        assert groups.macs(groups.removed_for_widths(widths)) == _conv_linear_macs(pruned, x)


def test_unit_costs_are_the_macs_one_removal_frees():
    model, x = make_model("cifar_resnet20"), example_input(32)
    groups = hm.ChannelGroups.from_model(model, x)
    removed = torch.zeros(groups.num_units, dtype=torch.bool)
    removed[groups.group_of_unit == 1] = torch.arange(int((groups.group_of_unit == 1).sum())) % 2 == 0
    for already in (None, removed):
        costs = groups.unit_costs(already)
        base = groups.macs(already)
        for u in torch.nonzero(~removed).flatten()[::7].tolist():
            one = (already if already is not None else torch.zeros_like(removed)).clone()
            one[u] = True
            assert costs[u].item() == pytest.approx(base - groups.macs(one), rel=1e-9)
    assert groups.unit_costs() is groups.unit_costs()  # the full network's costs: computed once


@pytest.mark.parametrize("name,res", [("cifar_resnet20", 32), ("mobilenetv2_100", 64)])
def test_prune_to_widths_keeps_the_leading_units_exactly_and_reloads(name, res, tmp_path):
    model, x = make_model(name), example_input(res)
    groups = hm.ChannelGroups.from_model(model, x)
    widths = [max(1, s // 2 + g % 3) for g, s in enumerate(groups.group_sizes)]  # uneven on purpose
    result = hm.prune_to_widths(model, x, widths)
    assert hm.ChannelGroups.from_model(result.model, x).group_sizes == widths
    # pruning = zeroing the removed units' slices in the original (MetaPruning's top-left crop)
    keep = (~groups.removed_for_widths(widths)).float()
    masked = torch.func.functional_call(model, groups.apply_mask(dict(model.state_dict()), keep), (x,))
    torch.testing.assert_close(result.model(x), masked, rtol=1e-4, atol=1e-5)
    assert result.macs_after == groups.macs(groups.removed_for_widths(widths))
    hm.save_pruned(result.model, tmp_path / "pruned", architecture=name)
    assert torch.equal(hm.load_pruned(tmp_path / "pruned")(x), result.model(x))
    fresh = make_model(name).state_dict()  # the input model is untouched
    assert all(torch.equal(v, fresh[k]) for k, v in model.state_dict().items())


def test_prune_to_widths_by_group_l2_removes_the_units_made_weak_by_hand():
    model, x = make_model("cifar_resnet20"), example_input(32)
    groups = hm.ChannelGroups.from_model(model, x)
    g = next(i for i, s in enumerate(groups.group_sizes) if s == 16)
    start, weak = sum(groups.group_sizes[:g]), [1, 4, 9, 14]
    with torch.no_grad():  # zero every slice of four units: they are dead, and the weakest by group L2
        params = dict(model.named_parameters())
        for sl in groups.slices:
            local = sl.unit - start
            dead = sl.index[(local >= 0) & (local < 16) & torch.isin(local, torch.tensor(weak))]
            if len(dead):
                params[sl.param].index_fill_(sl.dim, dead, 0.0)
    widths = list(groups.group_sizes)
    widths[g] = 12
    removed = groups.removed_for_widths(widths, dict(model.named_parameters()))
    assert torch.nonzero(removed).flatten().tolist() == [start + w for w in weak]
    pruned = hm.prune_to_widths(model, x, widths, keep="group_l2").model
    assert hm.ChannelGroups.from_model(pruned, x).group_sizes == widths
    torch.testing.assert_close(pruned(x), model(x), rtol=1e-4, atol=1e-5)  # only dead units were removed


def test_prune_to_widths_refuses_bad_widths_with_the_argument_named():
    model, x = make_model("cifar_resnet20"), example_input(32)
    sizes = hm.ChannelGroups.from_model(model, x).group_sizes
    n = len(sizes)
    with pytest.raises(ValueError, match=f"one width per coupled group: {n} groups, got 3"):
        hm.prune_to_widths(model, x, [4, 4, 4])
    with pytest.raises(ValueError, match=rf"widths\[2\] must be an integer in \[1, {sizes[2]}\] .*, got 0"):
        hm.prune_to_widths(model, x, sizes[:2] + [0] + sizes[3:])
    with pytest.raises(ValueError, match=rf"widths\[0\] must be an integer in \[1, {sizes[0]}\] .*, got 2.5"):
        hm.prune_to_widths(model, x, [2.5] + [1] * (n - 1))
    with pytest.raises(ValueError, match="keep must be 'first' or 'group_l2'"):
        hm.prune_to_widths(model, x, [1] * n, keep="last")
    with pytest.raises(ValueError, match=r"ratios must be \d+ numbers in \(0, 1\]"):
        hm.ChannelGroups.from_model(model, x).widths_for_ratios([1.5] * n)


def test_batchnorm_recalibration_lifts_accuracy_from_chance(tiny_zoo, cifar_small):
    model = tiny_zoo.model(0)
    trained = evaluate_accuracy(model, cifar_small)
    with torch.no_grad():  # statistics of another network, as generated or freshly pruned weights have
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.fill_(3.0)
                m.running_var.fill_(0.01)
    broken = evaluate_accuracy(model, cifar_small)
    batches = iter(torch.utils.data.DataLoader(cifar_small.train, batch_size=100,
                                               collate_fn=cifar_small.collator(augment=False)))
    assert recalibrate_batchnorm(model, batches, num_batches=10) == 10
    recalibrated = evaluate_accuracy(model, cifar_small)
    assert broken < 0.2 and recalibrated > broken + 0.1 and recalibrated > trained - 0.08, (trained, broken,
                                                                                            recalibrated)
    assert not model.training and all(m.momentum == 0.1 for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_batchnorm_recalibration_of_swapped_in_weights_and_bad_input(tiny_zoo, cifar_small):
    model = tiny_zoo.model(0)
    params = {k: v.clone() for k, v in model.state_dict().items()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batch = cifar_small.collator(augment=False)([cifar_small.train[i] for i in range(64)])
    recalibrate_batchnorm(model, [batch], params=params)
    for k, v in model.state_dict().items():  # the model's own buffers are untouched
        assert torch.equal(v, before[k])
    bn_input = model.layer1[0].bn1  # exactly the batch statistics of one batch (cumulative average)
    assert not torch.equal(params["layer1.0.bn1.running_mean"], before["layer1.0.bn1.running_mean"])
    assert bn_input.momentum == 0.1
    with pytest.raises(ValueError, match="no BatchNorm layer"):
        recalibrate_batchnorm(nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10)), [batch])
    with pytest.raises(ValueError, match="batches yielded nothing"):
        recalibrate_batchnorm(model, [])
    with pytest.raises(ValueError, match="num_batches must be a positive integer"):
        recalibrate_batchnorm(model, [batch], num_batches=0)
    with pytest.raises(ValueError, match="params must hold the BatchNorm buffers"):
        recalibrate_batchnorm(model, [batch], params={k: v for k, v in params.items() if "running" not in k})


def test_the_one_torch_only_rebuild_keeps_a_depthwise_conv_depthwise():
    from hf_metaprune.pruning.shapes import shrink_to_shapes

    m = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1))
    shapes = {"0.weight": (5, 1, 3, 3), "0.bias": (5,), "1.weight": (5,), "1.bias": (5,), "1.running_mean": (5,),
              "1.running_var": (5,), "2.weight": (4, 5, 1, 1)}
    shrink_to_shapes(m, shapes, {})
    assert (m[0].groups, m[0].in_channels, m[0].out_channels, m[1].num_features, m[2].in_channels) == (5, 5, 5, 5, 5)
    assert m.eval()(torch.randn(1, 5, 4, 4)).shape == (1, 4, 4, 4)


def test_load_pruned_refuses_weights_that_contradict_the_recorded_widths(tmp_path):
    import json

    model, x = make_model("cifar_resnet20"), example_input(32)
    hm.save_pruned(hm.prune_to_speedup(model, x, 2.0).model, tmp_path)
    spec = json.loads((tmp_path / "pruned_config.json").read_text())
    spec["widths"]["conv1"]["out"] += 1
    (tmp_path / "pruned_config.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match=r"do not match the per-layer widths .*'conv1' is"):
        hm.load_pruned(tmp_path)


def test_uniform_widths_is_the_largest_single_ratio_meeting_the_speed_up():
    groups = hm.ChannelGroups.from_model(make_model("cifar_resnet20"), example_input(32))
    for speed_up in (1.5, 2.0, 3.0):
        widths = groups.uniform_widths(speed_up)
        assert groups.macs(groups.removed_for_widths(widths)) <= groups.macs() / speed_up
        wider = groups.widths_for_ratios([min(1.0, widths[0] / groups.group_sizes[0] + 0.02)] * groups.num_groups)
        assert groups.macs(groups.removed_for_widths(wider)) > groups.macs() / speed_up
    with pytest.raises(ValueError, match="speed_up"):
        groups.uniform_widths(0.5)


def test_round_widths_keeps_channel_counts_multiples_and_leaves_full_narrow_and_head_groups():
    groups = hm.ChannelGroups.from_model(TwelveChannels().eval(), torch.randn(1, 3, 12, 12))
    assert sorted(groups.group_sizes) == [12, 20]
    wide = groups.group_sizes.index(20)

    def rounded(w20: int, w12: int, round_to, ratios: bool = False) -> tuple[int, int]:
        given = [w20, w12] if wide == 0 else [w12, w20]
        out = groups.widths_for_ratios(given, round_to) if ratios else groups.round_widths(given, round_to)
        return (out[wide], out[1 - wide])

    assert rounded(19, 3, 16) == (16, 12)  # down to a multiple; a group not wider than 16 stays whole
    assert rounded(20, 12, 16) == (20, 12)  # the full width stays
    assert rounded(5, 3, 16) == (16, 12)  # never below one multiple
    assert rounded(13, 3, None) == (13, 3)
    assert rounded(0.85, 0.5, 16, ratios=True) == (16, 12)
    groups.head_groups.add(wide)  # a group of heads keeps its head count as given
    assert rounded(13, 3, 16) == (13, 12)
    with pytest.raises(ValueError, match="round_to must be a positive integer"):
        groups.round_widths([3, 3], 0)


def test_uniform_widths_with_round_to_meet_the_target_in_multiples():
    model, x = make_model("cifar_resnet20"), example_input(32)
    groups = hm.ChannelGroups.from_model(model, x)
    for speed_up in (1.5, 2.0):
        widths = groups.uniform_widths(speed_up, round_to=8)
        assert all(w % 8 == 0 for w in widths)
        assert groups.macs() / groups.macs(groups.removed_for_widths(widths)) >= speed_up
    with pytest.raises(ValueError, match="out of reach"):
        groups.uniform_widths(40.0, round_to=8)


def test_removed_for_speedup_removes_the_lowest_scores_and_gives_back_what_the_target_affords():
    model, x = make_model("cifar_resnet20"), example_input(32)
    groups = hm.ChannelGroups.from_model(model, x)
    scores = torch.arange(groups.num_units, dtype=torch.float32).flip(0)  # the last units score lowest
    scores[groups.group_of_unit == 0] += 1000.0  # group 0 scores highest: pruned last
    for round_to in (None, 8):
        removed = groups.removed_for_speedup(scores, 2.0, round_to)
        macs = groups.macs(removed)
        assert groups.macs() / macs >= 2.0
        kept = torch.bincount(groups.group_of_unit[~removed], minlength=groups.num_groups)
        assert (kept >= 1).all()
        if round_to:
            assert all(k % 8 == 0 for k in kept.tolist()), kept
        for g in range(groups.num_groups):  # within a group, the removed units are its lowest scores
            members = groups.group_of_unit == g
            if removed[members].any() and (~removed[members]).any():
                assert scores[members & removed].max() <= scores[members & ~removed].min()
    # no removed unit could stay without missing the target (no rounding: any one unit)
    removed = groups.removed_for_speedup(scores, 2.0)
    for u in torch.nonzero(removed).flatten()[::5].tolist():
        back = removed.clone()
        back[u] = False
        assert groups.macs() / groups.macs(back) < 2.0
    with pytest.raises(ValueError, match="one value per unit"):
        groups.removed_for_speedup(scores[:-1], 2.0)
    with pytest.raises(ValueError, match="out of reach"):
        groups.removed_for_speedup(scores, 1000.0)
