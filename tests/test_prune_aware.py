"""The pruning-aware meta-objective: the mask is what prune_to_speedup removes, the masked loss is the pruned
network's loss, and its gradient reaches the metanetwork exactly (finite differences)."""
import pytest
import timm
import torch
from torch import nn

import hf_metaprune as hm
from hf_metaprune import ChannelGroups, MetaPrunerTrainer
from hf_metaprune.methods.metapruner import task_loss

from test_training import _args, _metapruner


def _resnet20_with_uneven_units() -> nn.Module:
    """A ResNet-20 whose BN scales spread over 0.05..1.5 in a fixed pattern, so units differ clearly in norm."""
    torch.manual_seed(0)
    model = timm.create_model("cifar_resnet20", num_classes=10).eval()
    with torch.no_grad():
        for i, bn in enumerate(m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            n = bn.num_features
            bn.weight.copy_(0.05 + 1.45 * ((torch.arange(n) * 7 + 3 * i) % n).float() / (n - 1))
    return model


def _conv_out_widths(groups: ChannelGroups, params, keep: torch.Tensor) -> dict[str, int]:
    return {s.param.removesuffix(".weight"): int(keep[s.unit].sum()) for s in groups.slices
            if s.dim == 0 and not s.is_bias and params[s.param].dim() == 4}


@pytest.mark.parametrize("round_to", [None, 8])
@pytest.mark.parametrize("speed_up", [1.5, 2.0, 3.0])
def test_pruned_units_are_exactly_what_prune_to_speedup_removes(speed_up, round_to):
    model, x = _resnet20_with_uneven_units(), torch.randn(1, 3, 32, 32)
    groups = ChannelGroups.from_model(model, x)
    params = dict(model.named_parameters())
    removed = groups.pruned_units(params, speed_up, round_to=round_to)
    result = hm.prune_to_speedup(model, x, speed_up, round_to=round_to)
    widths = _conv_out_widths(groups, params, (~removed).float())
    assert widths == {name: result.widths[name]["out"] for name in widths}
    if round_to:  # every pruned width a multiple of 8: the chunks, not single channels, were emulated
        assert all(w % round_to == 0 for w in widths.values()) and any(w % 16 for w in widths.values())
    assert groups.macs() / groups.macs(removed) == pytest.approx(result.speed_up, rel=1e-9)
    assert groups.macs() == pytest.approx(result.macs_before)


@pytest.mark.parametrize("round_to", [None, 8])
def test_masked_loss_equals_the_loss_of_the_really_pruned_network(round_to):
    model, x = _resnet20_with_uneven_units(), torch.randn(1, 3, 32, 32)
    groups = ChannelGroups.from_model(model, x)
    state = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    removed = groups.pruned_units(state, 2.0, round_to=round_to)
    assert 0 < int(removed.sum()) < groups.num_units
    torch.manual_seed(1)
    batch = {"pixel_values": torch.randn(16, 3, 32, 32), "labels": torch.randint(0, 10, (16,))}
    with torch.no_grad():
        masked, parts = task_loss(model, state, batch, groups, removed, prune_aware_weight=1.0)
        pruned = hm.prune_to_speedup(model, x, 2.0, round_to=round_to).model.eval()
        real = nn.functional.cross_entropy(pruned(batch["pixel_values"]), batch["labels"])
        full = nn.functional.cross_entropy(model(batch["pixel_values"]), batch["labels"])
    assert float(masked) == pytest.approx(float(real), rel=1e-5, abs=1e-6)
    assert parts["pruned_ce_loss"] == pytest.approx(float(real), rel=1e-5, abs=1e-6)
    assert abs(float(masked) - float(full)) > 1e-3  # the mask really changes the network


def _tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    with torch.no_grad():
        for bn in (model[1], model[4]):
            bn.weight.copy_(torch.linspace(0.1, 1.5, 8)[torch.tensor([3, 0, 6, 1, 7, 2, 5, 4])])
            bn.running_mean.uniform_(-0.1, 0.1)
            bn.running_var.uniform_(0.5, 1.5)
    return model.double().eval()


def test_pruning_aware_gradient_reaches_the_metanetwork_and_matches_finite_differences():
    model, x = _tiny_cnn(), torch.randn(1, 3, 8, 8, dtype=torch.float64)
    graph = hm.model_to_graph(model, x)
    torch.manual_seed(0)
    metapruner = hm.MetaPrunerModel(hm.MetaPrunerConfig.for_graphs([graph], hidden_size=8, num_layers=1,
                                                                   residual_scale=0.5)).double()
    with torch.no_grad():  # away from the identity initialisation, so every layer's gradient is non-trivial
        for p in metapruner.parameters():
            p.add_(0.1 * torch.randn_like(p))
    groups = ChannelGroups.from_model(model, x)
    buffers = dict(model.named_buffers())
    names = [n for n, _ in model.named_parameters()]
    batch = {"pixel_values": torch.randn(6, 3, 8, 8, dtype=torch.float64), "labels": torch.tensor([0, 1, 2, 3, 4, 0])}
    with torch.no_grad():
        removed = groups.pruned_units(metapruner(graph).tensors(), 2.0)  # held fixed: the mask is piecewise constant
    assert 0 < int(removed.sum()) < groups.num_units

    def loss_of_metanetwork() -> torch.Tensor:
        tensors = metapruner(graph).tensors()
        loss, _ = task_loss(model, {**{n: tensors[n] for n in names}, **buffers}, batch, groups, removed, 0.7)
        return loss

    # the trainer's route: the loss's gradient in W' (detached leaves), then one backward of <W', g> through the GNN
    metapruner.zero_grad()
    tensors = metapruner(graph).tensors()
    leaves = {n: tensors[n].detach().requires_grad_() for n in names}
    loss, parts = task_loss(model, {**leaves, **buffers}, batch, groups, removed, 0.7)
    loss.backward()
    sum((tensors[n] * leaves[n].grad).sum() for n in names).backward()
    grads = [p.grad.clone() for p in metapruner.parameters()]
    assert set(parts) == {"ce_loss", "pruned_ce_loss"}
    assert sum(float(g.abs().sum()) for g in grads) > 0
    assert sum(int(g.abs().sum() > 0) for g in grads) >= len(grads) // 2  # not only the decoder

    torch.manual_seed(1)
    direction = [torch.randn_like(p) for p in metapruner.parameters()]
    h = 1e-6
    with torch.no_grad():
        for p, d in zip(metapruner.parameters(), direction):
            p.add_(h * d)
        plus = float(loss_of_metanetwork())
        for p, d in zip(metapruner.parameters(), direction):
            p.sub_(2 * h * d)
        minus = float(loss_of_metanetwork())
        for p, d in zip(metapruner.parameters(), direction):
            p.add_(h * d)
    finite_difference = (plus - minus) / (2 * h)
    analytic = sum(float((g * d).sum()) for g, d in zip(grads, direction))
    assert analytic == pytest.approx(finite_difference, rel=1e-5)


def test_straight_through_mask_is_hard_forward_and_moves_removed_units_backward():
    model, x = _resnet20_with_uneven_units(), torch.randn(1, 3, 32, 32)
    groups = ChannelGroups.from_model(model, x)
    params = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
    removed = groups.pruned_units(params, 2.0)
    hard = groups.keep_mask(params, removed)
    soft = groups.keep_mask(params, removed, temperature=0.1)
    assert torch.equal(hard, (~removed).float()) and torch.equal(soft.detach(), hard)
    assert not hard.requires_grad
    weight = params["layer1.0.bn1.weight"]
    soft.sum().backward()  # more kept mass: push removed units up (toward the threshold)
    unit_of = next(s for s in groups.slices if s.param == "layer1.0.bn1.weight" and s.dim == 0)
    removed_here = removed[unit_of.unit]
    assert removed_here.any()
    assert (weight.grad[unit_of.index[removed_here]].abs() > 0).all()


def test_trainer_logs_the_pruning_aware_terms_and_changes_the_metanetwork(tiny_zoo, cifar_small, tmp_path,
                                                                          monkeypatch):
    train, _ = tiny_zoo.split(1)
    metapruner = _metapruner(train, cifar_small)
    before = {n: p.detach().clone() for n, p in metapruner.named_parameters()}
    masks = []  # the trainer masks what pruning with its round_to removes: widths stay multiples of 8
    emulate = ChannelGroups.pruned_units
    monkeypatch.setattr(ChannelGroups, "pruned_units", lambda self, *a, **k: masks.append(k) or emulate(self, *a, **k))
    trainer = MetaPrunerTrainer(model=metapruner, train_zoo=train, data=cifar_small,
                                args=_args(tmp_path, max_steps=2, prune_aware_weight=0.5, round_to=8,
                                           prune_aware_speed_ups=[2.0, 3.0], distill_weight=0.3))
    trainer.train()
    assert masks and all(k == {"round_to": 8} for k in masks)
    logged = [h for h in trainer.state.log_history if "pruned_ce_loss" in h]
    assert len(logged) == 2
    for h in logged:
        assert {"ce_loss", "pruned_ce_loss", "pruned_unit_fraction", "task_loss"} <= set(h)
        assert h["pruned_ce_loss"] > 0 and 0.15 < h["pruned_unit_fraction"] < 0.6
    assert any(not torch.equal(before[n], p) for n, p in metapruner.named_parameters())


@pytest.mark.parametrize("field,value,match", [
    ("prune_aware_weight", 1.5, "prune_aware_weight must be in"),
    ("distill_weight", -0.1, "distill_weight must be in"),
    ("prune_aware_temperature", -1.0, "prune_aware_temperature must be >= 0"),
    ("prune_aware_speed_ups", [1.0], "prune_aware_speed_ups must be"),
    ("round_to", 0, "round_to must be a positive integer"),
])
def test_pruning_aware_arguments_are_checked(tmp_path, field, value, match):
    with pytest.raises(ValueError, match=match):
        _args(tmp_path, **{field: value})
