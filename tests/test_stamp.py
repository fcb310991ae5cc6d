"""STAMP: the set encoder, task-adaptive masks under a MACs budget, physical pruning, meta-training, save/reload."""
import math

import pytest
import timm
import torch
from transformers import AutoModel, TrainingArguments

import hf_metaprune as hm
from hf_metaprune.methods.stamp import SetEncoder, TaskEpisodes, fit_head

from conftest import example_input, make_model


def _stamp(**kw):
    torch.manual_seed(0)
    backbone = make_model("cifar_resnet20", num_classes=6)
    kw = {"hidden_size": 16, "num_heads": 2, "num_inducing_points": 4, "set_size": 24, **kw}
    return hm.STAMPModel.from_network(backbone, **kw).eval()


def _task(num_classes=4, per_class=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    return {"pixel_values": torch.randn(len(labels), 3, 32, 32, generator=g), "labels": labels}


def test_set_encoder_is_permutation_invariant():
    torch.manual_seed(0)
    encoder = SetEncoder(feature_size=8, hidden_size=16, num_heads=2, num_inducing_points=4, num_isab=2).eval()
    x = torch.randn(1, 30, 8)
    perm = torch.randperm(30)
    with torch.no_grad():
        torch.testing.assert_close(encoder(x[:, perm]), encoder(x), rtol=1e-5, atol=1e-6)
        assert not torch.allclose(encoder(x[:, :15]), encoder(x))  # it does read the set


def test_keep_logits_follow_the_task_and_the_target_speed_up():
    stamp = _stamp()
    with torch.no_grad():  # generators read the task embedding and log(speed-up): push both through strongly
        for mlp in stamp.generator.groups:
            mlp[2].weight.normal_(0, 1.0)
    a, b = _task(seed=0), _task(seed=1)
    with torch.no_grad():
        la = stamp.keep_logits(a["pixel_values"], 2.0)
        assert la.shape == (stamp.groups.num_units,)
        assert not torch.equal(la, stamp.keep_logits(b["pixel_values"] * 3, 2.0))
        assert not torch.equal(la, stamp.keep_logits(a["pixel_values"], 3.0))


@pytest.mark.parametrize("speed_up", [2.0, 3.0])
def test_masks_meet_the_budget_with_the_fewest_removals_and_prune_physically(speed_up):
    stamp = _stamp()
    logits, removed = stamp.task_masks(_task(), speed_up)
    groups = stamp.groups
    macs0 = groups.macs()
    assert groups.macs(removed) <= macs0 / speed_up * (1 + 1e-9)
    for u in torch.nonzero(removed).flatten().tolist():  # no removed unit could stay: each would miss the target
        fewer = removed.clone()
        fewer[u] = False
        assert groups.macs(fewer) > macs0 / speed_up
    assert logits[removed].mean() < logits[~removed].mean()
    assert all(not removed[groups.group_of_unit == g].all() for g in range(groups.num_groups))
    result = stamp.prune(None, _task(), speed_up)
    assert speed_up <= result.speed_up < speed_up * 1.02  # one channel is < 2 % of ResNet-20's MACs
    assert result.model.get_classifier().out_features == 4  # a fresh head for the task's classes
    assert result.model(example_input(32)).shape == (1, 4)


def test_hard_masked_forward_equals_the_physically_pruned_network():
    stamp = _stamp()
    _, removed = stamp.task_masks(_task(), 2.5)
    x = torch.randn(3, 3, 32, 32)
    keep = (~removed).float()
    with torch.no_grad():
        masked = torch.func.functional_call(stamp.network, stamp.masked_params(keep), (x,))
        pruned = hm.prune_units(stamp.network, example_input(32), removed).model.eval()
        torch.testing.assert_close(pruned(x), masked, rtol=1e-4, atol=1e-5)


def test_expected_macs_is_exact_for_hard_masks_and_the_budget_terms_measure_the_gap():
    stamp = _stamp()
    groups = stamp.groups
    removed = torch.zeros(groups.num_units, dtype=torch.bool)
    removed[::3] = True
    assert groups.expected_macs((~removed).float()).item() == pytest.approx(groups.macs(removed), rel=1e-6)
    assert groups.expected_macs(torch.ones(groups.num_units)).item() == pytest.approx(groups.macs(), rel=1e-6)
    # every unit kept with probability 1/2: every layer with pruned inputs and outputs costs a quarter
    half = torch.zeros(groups.num_units)
    budget, ratio = stamp.budget_loss(half, speed_up=2.0)
    assert 0.25 <= ratio.item() < 0.5 and budget.item() == 0.0  # below the 2x target: no penalty
    full = torch.full((groups.num_units,), 20.0)
    budget, ratio = stamp.budget_loss(full, speed_up=2.0)
    assert ratio.item() == pytest.approx(1.0, abs=1e-6) and budget.item() == pytest.approx(0.5, abs=1e-6)
    kl_stamp = _stamp(budget="kl")
    prior = torch.full((groups.num_units,), 0.5).logit()  # keep probability = the prior's 1/2
    assert kl_stamp.budget_loss(prior, speed_up=2.0)[0].item() == pytest.approx(0.0, abs=1e-6)
    # every unit surely kept against a prior keeping half: KL(Bernoulli(1) || Bernoulli(1/2)) = log 2 per unit
    assert kl_stamp.budget_loss(full, speed_up=2.0)[0].item() == pytest.approx(math.log(2), abs=1e-4)


def test_gradients_of_an_episode_reach_the_encoder_and_generators_never_the_backbone():
    stamp = _stamp().train()
    s, q = _task(per_class=4, seed=0), _task(per_class=3, seed=1)
    out = stamp(s["pixel_values"], s["labels"], q["pixel_values"], q["labels"], speed_up=2.0)
    out.loss.backward()
    assert out.logits.shape == (12, 4)
    for name, p in stamp.named_parameters():
        if name.startswith("network."):
            assert not p.requires_grad and p.grad is None, name
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert any(p.grad.abs().sum() > 0 for p in stamp.generator.parameters())


def test_fit_head_starts_at_the_nearest_prototype_classifier():
    features = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.2, 0.1], [0.1, 1.8]])
    labels = torch.tensor([0, 1, 0, 1])
    head = fit_head(features, labels, steps=0, learning_rate=0.5)
    torch.testing.assert_close(head.weight, torch.tensor([[2.1, 0.05], [0.05, 1.9]]))
    assert head(torch.tensor([[1.9, 0.2], [0.3, 2.1]])).argmax(1).tolist() == [0, 1]
    trained = fit_head(features, labels, steps=20, learning_rate=0.5)
    loss = lambda h: torch.nn.functional.cross_entropy(h(features), labels)  # noqa: E731
    assert loss(trained) < loss(head)


def _reference_data(num_classes=6, per_class=12):
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    images = torch.randint(0, 256, (len(labels), 3, 32, 32), dtype=torch.uint8, generator=g)
    split = hm.data.TensorImageDataset(images, labels)
    return hm.data.ImageClassificationData(split, split, None, num_classes)


def test_episodes_are_seeded_class_balanced_and_disjoint():
    data = _reference_data()
    episodes = TaskEpisodes(data, num_episodes=5, support_size=12, query_size=6, ways=(2, 4), seed=3)
    again = TaskEpisodes(data, num_episodes=5, support_size=12, query_size=6, ways=(2, 4), seed=3)
    for i in range(5):
        e = episodes[i]
        assert e == again[i]
        ways = len({label for _, label in e["support"]})
        assert 2 <= ways <= 4 and 1.5 <= e["speed_up"] <= 4.0
        assert not {j for j, _ in e["support"]} & {j for j, _ in e["query"]}
        counts = torch.bincount(torch.tensor([label for _, label in e["support"]]))
        assert counts.min() == counts.max()
    with pytest.raises(ValueError, match="ways"):
        TaskEpisodes(data, num_episodes=5, ways=(1, 3))
    with pytest.raises(ValueError, match="ways"):
        TaskEpisodes(data, num_episodes=5, ways=(2, 7))


def test_meta_training_updates_encoder_and_generators_and_keeps_the_backbone(tmp_path):
    stamp = _stamp(set_size=12).train()
    backbone = {k: v.clone() for k, v in stamp.network.state_dict().items()}
    generator = [p.detach().clone() for p in stamp.generator.parameters()]
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=3, learning_rate=1e-3, report_to="none",
                             disable_tqdm=True, use_cpu=True, save_strategy="no", logging_steps=1, seed=0)
    trainer = hm.STAMPTrainer(stamp, args, _reference_data(), num_episodes=3, query_size=6, ways=(2, 3))
    trainer.train()
    assert all(torch.equal(v, stamp.network.state_dict()[k]) for k, v in backbone.items())
    assert any(not torch.equal(a, b) for a, b in zip(generator, stamp.generator.parameters()))
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert torch.isfinite(torch.tensor(trainer.evaluate()["eval_loss"]))


def test_save_and_reload_is_bit_exact(tmp_path):
    stamp = _stamp()
    with torch.no_grad():
        for mlp in stamp.generator.groups:
            mlp[2].weight.normal_(0, 0.5)
    stamp.save_pretrained(tmp_path / "stamp")
    for loaded in (hm.STAMPModel.from_pretrained(tmp_path / "stamp"), AutoModel.from_pretrained(tmp_path / "stamp")):
        assert isinstance(loaded, hm.STAMPModel)
        loaded.eval()
        for k, v in stamp.state_dict().items():
            assert torch.equal(v, loaded.state_dict()[k]), k
        task = _task()
        with torch.no_grad():
            assert torch.equal(stamp.keep_logits(task["pixel_values"], 2.0),
                               loaded.keep_logits(task["pixel_values"], 2.0))
    assert "STAMP" in (tmp_path / "stamp" / "README.md").read_text()


def test_a_task_with_one_class_or_no_images_is_refused():
    stamp = _stamp()
    one = _task(num_classes=1)
    with pytest.raises(ValueError, match="1 class"):
        stamp.prune(None, one, 2.0)
    empty = {"pixel_values": torch.zeros(0, 3, 32, 32), "labels": torch.zeros(0, dtype=torch.long)}
    with pytest.raises(ValueError, match="zero images"):
        stamp.prune(None, empty, 2.0)
    data = _reference_data()
    with pytest.raises(ValueError, match="1 class"):
        stamp.prune(None, data.select_classes([2]), 2.0)
    with pytest.raises(TypeError, match="task_data"):
        stamp.prune(None, [1, 2, 3], 2.0)
    with pytest.raises(ValueError, match="speed_up"):
        stamp.prune(None, _task(), 0.5)
    with pytest.raises(ValueError, match="out of reach"):
        stamp.prune(None, _task(), 500.0)


def test_another_architecture_or_bad_config_is_refused():
    stamp = _stamp()
    with pytest.raises(ValueError, match="coupled groups"):
        stamp.prune(timm.create_model("cifar_resnet32", num_classes=6), _task(), 2.0)
    with pytest.raises(TypeError, match="get_classifier"):
        stamp.prune(torch.nn.Linear(3, 3), _task(), 2.0)
    with pytest.raises(ValueError, match="budget"):
        hm.STAMPConfig(budget="l1")
    with pytest.raises(ValueError, match="speed_ups"):
        hm.STAMPConfig(speed_ups=[3.0, 2.0])
    with pytest.raises(ValueError, match="divisible"):
        hm.STAMPConfig(hidden_size=10, num_heads=4)


def test_select_classes_relabels_a_class_split():
    data = _reference_data()
    target = data.select_classes([4, 1])
    assert target.num_classes == 2 and len(target.train) == 24
    assert torch.equal(target.train.images[:12], data.train.images[data.train.labels == 1])  # data order kept
    assert target.train.labels.tolist() == [1] * 12 + [0] * 12  # class 4 -> 0, class 1 -> 1: the order given
    with pytest.raises(ValueError, match="select_classes"):
        data.select_classes([1, 1])
    with pytest.raises(ValueError, match="select_classes"):
        data.select_classes([9])


def test_prune_units_refuses_a_mask_of_the_wrong_shape_or_an_emptied_group():
    model = make_model("cifar_resnet20")
    groups = hm.ChannelGroups.from_model(model, example_input(32))
    with pytest.raises(ValueError, match="bool tensor"):
        hm.prune_units(model, example_input(32), torch.zeros(3, dtype=torch.bool))
    removed = groups.group_of_unit == 0
    with pytest.raises(ValueError, match="empties the coupled groups \\[0\\]"):
        hm.prune_units(model, example_input(32), removed)


def test_an_untrained_generator_starts_from_the_backbones_own_ranking():
    torch.manual_seed(0)
    backbone = make_model("cifar_resnet20", num_classes=6)
    groups = hm.ChannelGroups.from_model(backbone, example_input(32))
    weak = [s for s in groups.slices if s.param == "layer3.2.conv1.weight" and s.dim == 0][0]
    units = weak.unit[weak.index < 20]  # the first 20 inner channels of the last block: made weak by hand
    factor = torch.ones(groups.num_units)
    factor[units] = 1e-3
    with torch.no_grad():
        weakened = groups.apply_mask(dict(backbone.named_parameters()), factor)
        for name, p in backbone.named_parameters():
            p.copy_(weakened[name])
    stamp = hm.STAMPModel.from_network(backbone, hidden_size=16, num_heads=2, num_inducing_points=4, set_size=24)
    logits, removed = stamp.task_masks(_task(), 1.3)
    assert removed[units].all()  # the weak channels go first
    tie = hm.STAMPModel.from_network(backbone, hidden_size=16, num_heads=2, num_inducing_points=4,
                                     init_from_norms=False)
    assert torch.allclose(tie.generator.groups[0][2].bias, torch.full_like(tie.generator.groups[0][2].bias, 3.0))


def test_stamp_example_under_accelerate_launch(tmp_path):
    """examples/stamp.py with two processes: backbone and meta-training data-parallel, the unseen task pruned from a
    sample of its images and finetuned against the uniform multiplier; the STAMP model and pruned network reload."""
    import json
    import subprocess

    from test_accelerate import ACCELERATE, DATA, REPO, TIMEOUT, _env, _free_port

    out = tmp_path / "run"
    cmd = [*ACCELERATE, "--multi_gpu", "--num_processes", "2", "--main_process_port", str(_free_port()),
           "examples/stamp.py", "--dataset", DATA, "--output_dir", str(out), "--max_train_samples", "1200",
           "--val_size", "300", "--base_epochs", "0.2", "--episodes", "4", "--set_size", "24",
           "--finetune_epochs", "0.2", "--disable_tqdm", "true"]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    results = json.loads((out / "results.json").read_text())
    stamp_row, uniform = results["rows"]
    assert stamp_row["method"] == "STAMP" and 2.0 <= stamp_row["speed_up"] < 2.04 and uniform["speed_up"] >= 2.0
    assert hm.load_pruned(out / "pruned").get_classifier().out_features == 4
    assert "episode_loss" in hm.STAMPModel.from_pretrained(out / "stamp").config.validation_scores


def test_round_to_keeps_every_pruned_width_a_multiple_and_meets_the_target():
    stamp = _stamp()
    result = stamp.prune(None, _task(), 2.0, round_to=8)
    assert result.speed_up >= 2.0
    sizes = hm.ChannelGroups.from_model(result.model, example_input(32)).group_sizes
    assert all(w % 8 == 0 for w in sizes), sizes
    with pytest.raises(ValueError, match="round_to must be a positive integer"):
        stamp.prune(None, _task(), 2.0, round_to=0)
