import copy
import json
import os

import datasets
import pytest
import timm
import torch

import hf_metaprune as hm
from hf_metaprune import MetaPrunerTrainer, MetaPrunerTrainingArguments
from hf_metaprune.training import (DataModelZoo, evaluate_accuracy,
                                   finetune, prune_and_finetune, train_zoo)
from hf_metaprune.training.zoo import ZOO_FEATURES


def _metapruner(zoo, data, **kw):
    graph = hm.model_to_graph(zoo.model(0), data.example_inputs())
    torch.manual_seed(0)
    return hm.MetaPrunerModel(hm.MetaPrunerConfig.for_graphs(
        [graph], hidden_size=kw.pop("hidden_size", 16), num_layers=kw.pop("num_layers", 2),
        residual_scale=kw.pop("residual_scale", 0.1), dataset="cifar10-subset"))


def _args(out, **kw):
    defaults = dict(output_dir=str(out), max_steps=4, per_device_train_batch_size=1, learning_rate=1e-3,
                    optim="adamw_torch", weight_decay=0.0, lr_scheduler_type="constant", sparsity_lambda=1e-3,
                    sparsity_relative=False, prune_aware_weight=0.0,
                    task_batch_size=32, task_batches_per_step=2, logging_steps=1, save_strategy="no",
                    eval_strategy="no", probe_finetune_steps=3, probe_eval_samples=200, report_to="none",
                    disable_tqdm=True, use_cpu=True, seed=0)
    defaults.update(kw)
    return MetaPrunerTrainingArguments(**defaults)


# ---- zoo ------------------------------------------------------------------------------------------------------

def test_zoo_is_a_dataset_that_reloads_offline_with_identical_models(tiny_zoo, cifar_small, tmp_path):
    assert len(tiny_zoo) == 3 and tiny_zoo.require_architecture() == "cifar_resnet20"
    assert tiny_zoo.dataset["seed"] == [0, 1, 2]
    assert all(0.15 < a <= 1 for a in tiny_zoo.dataset["val_accuracy"])  # trained, better than chance
    tiny_zoo.save_to_disk(tmp_path / "copy")
    reloaded = DataModelZoo(datasets.load_from_disk(str(tmp_path / "copy")))
    x = cifar_small.example_inputs(4)
    for i in range(3):
        assert torch.equal(tiny_zoo.model(i)(x), reloaded.model(i)(x))
    a, b = tiny_zoo.model(0), tiny_zoo.model(1)
    assert not torch.equal(a.conv1.weight, b.conv1.weight)  # different seeds


def test_zoo_resumes_after_an_interruption(cifar_small, tmp_path):
    kw = dict(epochs=0.1, batch_size=64, disable_tqdm=True, save_strategy="no", eval_strategy="no",
              load_best_model_at_end=False)
    first = train_zoo("cifar_resnet20", cifar_small, str(tmp_path), num_models=2, **kw)
    assert first.dataset["seed"] == [0, 1]
    weights_before = first.dataset["weights"]
    resumed = train_zoo("cifar_resnet20", cifar_small, str(tmp_path), num_models=3, **kw)
    assert resumed.dataset["seed"] == [0, 1, 2]
    assert resumed.dataset["weights"][:2] == weights_before  # finished models are kept, not retrained
    with pytest.raises(ValueError, match="another output_dir"):
        train_zoo("cifar_resnet56", cifar_small, str(tmp_path), num_models=1, **kw)


def test_lightly_pruned_zoo_members_have_varying_widths(cifar_small, tmp_path):
    zoo = train_zoo("cifar_resnet20", cifar_small, str(tmp_path), num_models=1, epochs=0.1, prune_speed_up=1.3,
                    finetune_epochs=0.1, batch_size=64, disable_tqdm=True, save_strategy="no", eval_strategy="no",
                    load_best_model_at_end=False)
    widths = json.loads(zoo.dataset["widths"][0])
    assert min(w["out"] for n, w in widths.items() if n != "fc") < 16
    model = zoo.model(0)
    assert model(cifar_small.example_inputs(2)).shape == (2, 10)
    macs, _ = hm.count_macs_and_params(model, cifar_small.example_inputs())
    assert zoo.dataset["macs"][0] == pytest.approx(macs)


def test_light_pruning_cycles_over_seeds_and_is_part_of_the_recipe(cifar_small, tmp_path):
    kw = dict(epochs=0.05, finetune_epochs=0.05, batch_size=64, disable_tqdm=True, save_strategy="no",
              eval_strategy="no", load_best_model_at_end=False)
    zoo = train_zoo("cifar_resnet20", cifar_small, str(tmp_path), num_models=3, seed=1, prune_speed_up=[1.0, 1.5],
                    finetune_learning_rate=0.01, **kw)
    full, _ = hm.count_macs_and_params(timm.create_model("cifar_resnet20", num_classes=10),
                                       cifar_small.example_inputs())
    ratios = [full / m for m in zoo.dataset["macs"]]  # seed s gets entry s % 2: seeds 1 and 3 pruned, 2 not
    assert ratios[1] == 1.0 and 1.5 <= ratios[0] <= 1.5 * 1.01 and 1.5 <= ratios[2] <= 1.5 * 1.01
    assert zoo.recipe["prune_speed_up"] == [1.0, 1.5] and zoo.recipe["finetune_learning_rate"] == 0.01
    with pytest.raises(ValueError, match=r"prune_speed_up: \[1.0, 1.5\] in the zoo, \[1.0, 1.3\] now"):
        train_zoo("cifar_resnet20", cifar_small, str(tmp_path), num_models=4, seed=1, prune_speed_up=[1.0, 1.3],
                  finetune_learning_rate=0.01, **kw)
    for bad in ([], [0.5, 2.0], ["2"], 0.9):
        with pytest.raises(ValueError, match="prune_speed_up must be"):
            train_zoo("cifar_resnet20", cifar_small, str(tmp_path / "bad"), num_models=1, prune_speed_up=bad, **kw)
    assert not (tmp_path / "bad").exists()


def test_bad_zoos_are_clear_errors(tiny_zoo):
    empty = DataModelZoo(tiny_zoo.dataset.select([]))
    with pytest.raises(ValueError, match="empty"):
        empty.require_architecture()
    rows = tiny_zoo.dataset.select([0]).to_list()
    mixed = DataModelZoo(datasets.Dataset.from_list(rows + [{**rows[0], "architecture": "cifar_resnet32"}],
                                                    features=ZOO_FEATURES))
    with pytest.raises(ValueError, match="mixes architectures"):
        mixed.require_architecture()
    with pytest.raises(ValueError, match="data model 1.*cifar_resnet32.*do not match"):
        mixed.model(1)  # ResNet-20 weights declared as ResNet-32
    corrupt = DataModelZoo(datasets.Dataset.from_list([{**rows[0], "weights": b"garbage"}], features=ZOO_FEATURES))
    with pytest.raises(ValueError, match="data model 0.*safetensors"):
        corrupt.model(0)
    with pytest.raises(ValueError, match="columns"):
        DataModelZoo(datasets.Dataset.from_dict({"x": [1]}))


# ---- meta-training ----------------------------------------------------------------------------------------------

def test_meta_training_concentrates_group_norms_and_keeps_accuracy(tiny_zoo, cifar_small, tmp_path):
    train, held_out = tiny_zoo.split(1)
    model = _metapruner(train, cifar_small)
    args = _args(tmp_path, max_steps=40, warmup_steps=5, logging_steps=10, weak_group_threshold=0.95,
                 sparsity_lambda=3e-3)
    trainer = MetaPrunerTrainer(model=model, args=args, train_zoo=train, data=cifar_small)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "sparsity_loss" in h]
    first, last = logs[0], logs[-1]
    assert last["sparsity_loss"] < 0.97 * first["sparsity_loss"]
    assert last["weak_group_fraction"] > max(first["weak_group_fraction"] + 0.03, 3 * first["weak_group_fraction"]), \
        (first, last)  # measured here: 0.009 -> 0.073
    assert {"ce_loss", "sparsity_term", "group_norm_p10", "group_norm_p50", "group_norm_p90"} <= set(last)
    original = train.model(0)
    transformed = model.eval().transform(original, cifar_small.example_inputs())
    acc_original = evaluate_accuracy(original, cifar_small)
    acc_transformed = evaluate_accuracy(transformed, cifar_small)
    assert acc_transformed > acc_original - 0.05, (acc_original, acc_transformed)


def test_prune_and_probe_evaluation_selects_and_cards_the_best(tiny_zoo, cifar_small, tmp_path):
    train, held_out = tiny_zoo.split(1)
    args = _args(tmp_path, max_steps=2, eval_strategy="steps", eval_steps=1, save_strategy="steps", save_steps=1,
                 load_best_model_at_end=True)
    trainer = MetaPrunerTrainer(model=_metapruner(train, cifar_small), args=args, train_zoo=train,
                                eval_zoo=held_out, data=cifar_small)
    trainer.train()
    evals = [h for h in trainer.state.log_history if "eval_probe_accuracy" in h]
    assert len(evals) == 2
    probed = copy.copy(cifar_small)  # prune-and-probe scores the first probe_eval_samples validation images
    if args.probe_eval_samples:
        probed.validation = cifar_small.validation.subset(args.probe_eval_samples)
    assert evals[0]["eval_original_accuracy"] == pytest.approx(evaluate_accuracy(held_out.model(0), probed))
    n = len(probed.validation)
    for key in ("original", "transformed", "pruned", "probe", "baseline_probe"):  # counts of validation images
        assert evals[0][f"eval_{key}_accuracy"] * n == pytest.approx(round(evals[0][f"eval_{key}_accuracy"] * n))
    best = max(evals, key=lambda h: h["eval_probe_accuracy"])
    assert trainer.state.best_metric == pytest.approx(best["eval_probe_accuracy"])
    trainer.save_model(str(tmp_path / "final"))
    loaded = hm.MetaPrunerModel.from_pretrained(str(tmp_path / "final"))
    assert loaded.config.validation_scores["probe_accuracy"] == pytest.approx(best["eval_probe_accuracy"], abs=1e-4)
    card = (tmp_path / "final" / "README.md").read_text()
    for text in ("library_name: hf_metaprune", "cifar_resnet20", "cifar10-subset", "group_l2",
                 "num_data_models: 3", "probe_accuracy"):
        assert text in card, text


def test_resuming_from_a_checkpoint_continues_exactly(tiny_zoo, cifar_small, tmp_path):
    train, _ = tiny_zoo.split(1)
    # full_determinism: CPU scatter reductions are otherwise only reproducible to ~1e-5 between two runs
    full = MetaPrunerTrainer(model=_metapruner(train, cifar_small), args=_args(tmp_path / "a", full_determinism=True),
                             train_zoo=train, data=cifar_small)
    full.train()
    interrupted = MetaPrunerTrainer(model=_metapruner(train, cifar_small),
                                    args=_args(tmp_path / "b", max_steps=2, save_strategy="steps", save_steps=2,
                                              full_determinism=True),
                                    train_zoo=train, data=cifar_small)
    interrupted.train()
    resumed = MetaPrunerTrainer(model=_metapruner(train, cifar_small),
                                args=_args(tmp_path / "b", save_strategy="steps", save_steps=2, full_determinism=True),
                                train_zoo=train, data=cifar_small)
    resumed.train(resume_from_checkpoint=str(tmp_path / "b" / "checkpoint-2"))
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_weight_average_is_what_evaluation_checkpoints_and_the_result_use(tiny_zoo, cifar_small, tmp_path):
    import safetensors.torch
    from transformers import TrainerCallback

    train, held_out = tiny_zoo.split(1)
    trained = []  # the weights being trained, after every step

    class Record(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            trained.append({n: p.detach().clone() for n, p in model.named_parameters()})

    def trainer(out, **kw):
        return MetaPrunerTrainer(model=_metapruner(train, cifar_small), train_zoo=train, eval_zoo=held_out,
                                 data=cifar_small, args=_args(out, ema_decay=0.5, max_steps=3, save_strategy="steps",
                                                              save_steps=2, full_determinism=True, **kw))

    full = trainer(tmp_path / "a", eval_strategy="steps", eval_steps=2)
    full.add_callback(Record())
    probed = []
    full._probe = lambda metapruner, index, with_baseline: (
        probed.append({n: p.detach().clone() for n, p in metapruner.named_parameters()})
        or {"probe_accuracy": 0.5, "baseline": 0.4})
    full.train()
    p1, p2, p3 = trained
    average = [p1]
    for p in (p2, p3):  # decay 0.5: the average moves half-way to the new weights
        average.append({n: 0.5 * average[-1][n] + 0.5 * p[n] for n in p})
    names = list(p1)
    assert not torch.allclose(p2[names[0]], p3[names[0]])  # the weights really moved
    for n in names:
        assert torch.allclose(probed[0][n], average[1][n], atol=1e-6), n  # evaluation at step 2: the average
        assert torch.allclose(dict(full.model.named_parameters())[n], average[2][n], atol=1e-6), n  # the result
    checkpoint = tmp_path / "a" / "checkpoint-2"
    saved = safetensors.torch.load_file(str(checkpoint / "model.safetensors"))
    beside = safetensors.torch.load_file(str(checkpoint / "trained_weights.safetensors"))
    for n in names:
        assert torch.allclose(saved[n], average[1][n], atol=1e-6) and torch.equal(beside[n], p2[n]), n
    assert hm.MetaPrunerModel.from_pretrained(str(checkpoint)) is not None  # the average loads as a metanetwork

    # resumed from step 2, training continues from the trained weights and the average from the saved one
    resumed = trainer(tmp_path / "a")
    resumed.train(resume_from_checkpoint=str(checkpoint))
    for n, p in resumed.model.named_parameters():
        assert torch.allclose(p, average[2][n], atol=1e-6), n
    with pytest.raises(ValueError, match="ema_decay must be in \\[0, 1\\)"):
        _args(tmp_path, ema_decay=1.0)


def test_non_finite_loss_stops_clearly_and_keeps_the_last_good_checkpoint(tiny_zoo, cifar_small, tmp_path):
    train, _ = tiny_zoo.split(1)
    trainer = MetaPrunerTrainer(model=_metapruner(train, cifar_small),
                                args=_args(tmp_path, max_steps=3, save_strategy="steps", save_steps=1),
                                train_zoo=train, data=cifar_small)
    compute = trainer._task_gradient

    def poisoned(target, params, index):
        ce, grads, stats = compute(target, params, index)
        return (ce * float("nan"), grads, stats) if trainer.state.global_step >= 1 else (ce, grads, stats)

    trainer._task_gradient = poisoned
    with pytest.raises(FloatingPointError, match="non-finite.*step 1.*checkpoint"):
        trainer.train()
    assert os.path.isdir(tmp_path / "checkpoint-1") and not os.path.isdir(tmp_path / "checkpoint-2")
    good = hm.MetaPrunerModel.from_pretrained(str(tmp_path / "checkpoint-1"))
    assert all(torch.isfinite(p).all() for p in good.parameters())


def test_trainer_refuses_mixed_families_and_gradient_accumulation(tiny_zoo, cifar_small, tmp_path):
    train, held_out = tiny_zoo.split(1)
    rows = held_out.dataset.to_list()
    other = DataModelZoo(datasets.Dataset.from_list([{**rows[0], "architecture": "cifar_resnet32"}],
                                                    features=ZOO_FEATURES))
    with pytest.raises(ValueError, match="eval zoo holds cifar_resnet32"):
        MetaPrunerTrainer(model=_metapruner(train, cifar_small), args=_args(tmp_path), train_zoo=train,
                          eval_zoo=other, data=cifar_small)
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        _args(tmp_path, gradient_accumulation_steps=2)


def test_push_to_hub_uploads_weights_config_and_model_card(monkeypatch, tiny_zoo, cifar_small):
    uploaded = {}

    class FakeRepo:
        repo_id = "user/metapruner"

    def fake_upload(self, repo_id, folder_path, **kw):
        uploaded.update({f: open(os.path.join(folder_path, f), "rb").read() for f in os.listdir(folder_path)})
        return "ok"

    monkeypatch.setattr(hm.methods.base.HfApi, "create_repo", lambda self, repo_id, **kw: FakeRepo())
    monkeypatch.setattr(hm.methods.base.HfApi, "upload_folder", fake_upload)
    model = _metapruner(tiny_zoo, cifar_small)
    model.config.base_architecture = "cifar_resnet20"
    assert model.push_to_hub("user/metapruner") == "ok"
    assert {"model.safetensors", "config.json", "README.md"} <= set(uploaded)
    assert b"user/metapruner" in uploaded["README.md"] and b"library_name: hf_metaprune" in uploaded["README.md"]


# ---- finetuning and the full pipeline ---------------------------------------------------------------------------

def test_finetune_with_distillation_and_sparse_learning(tiny_zoo, cifar_small, tmp_path):
    teacher = tiny_zoo.model(0)
    student = hm.prune_to_speedup(teacher, cifar_small.example_inputs(), 2.0).model
    before = evaluate_accuracy(student, cifar_small)
    result = finetune(student, cifar_small, str(tmp_path), epochs=1, batch_size=64, learning_rate=0.02,
                      teacher=teacher, sparsity_lambda=1e-4, disable_tqdm=True)
    assert result.val_accuracy == pytest.approx(evaluate_accuracy(result.model, cifar_small), abs=1e-6)
    assert result.val_accuracy > before
    assert any("eval_accuracy" in h for h in result.log_history)
    assert all(not p.is_contiguous(memory_format=torch.channels_last) or p.dim() != 4 or p.is_contiguous()
               for p in result.model.parameters())


def test_prune_and_finetune_runs_the_published_pipeline(tiny_zoo, cifar_small, tmp_path):
    model = tiny_zoo.model(2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    metapruner = _metapruner(tiny_zoo, cifar_small).eval()
    result = prune_and_finetune(model, cifar_small, 2.0, str(tmp_path), metapruner=metapruner,
                                transform_epochs=0.2, finetune_epochs=0.2, distill=True, batch_size=64,
                                disable_tqdm=True)
    assert 2.0 <= result.prune.speed_up <= 2.02
    assert set(result.stage_seconds) == {"transform", "pre_prune_training", "prune", "finetune"}
    assert set(result.stage_val_accuracy) == {"transformed", "pre_prune", "pruned", "finetuned"}
    assert result.val_accuracy == result.stage_val_accuracy["finetuned"]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # input untouched
    hm.save_pruned(result.model, tmp_path / "pruned")
    x = cifar_small.example_inputs(4)
    assert torch.allclose(hm.load_pruned(tmp_path / "pruned")(x), result.model.eval()(x), atol=1e-5)


def test_group_sparsity_penalty_matches_a_direct_computation_and_its_relative_form_is_scale_free():
    from hf_metaprune.pruning import ChannelGroups, sparsity_penalty

    torch.manual_seed(0)
    model = hm.models.CifarResNet(depth=8, widths=(4, 8, 8)).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    groups = ChannelGroups.from_model(model, torch.randn(1, 3, 32, 32))
    params = dict(model.named_parameters())
    sq = groups.unit_sq_norms(params)
    # layer1.0's inner channels: conv1 rows, bn1 weight and bias, conv2 columns
    block = model.layer1[0]
    direct = (block.conv1.weight.pow(2).sum((1, 2, 3)) + block.bn1.weight.pow(2) + block.bn1.bias.pow(2)
              + block.conv2.weight.pow(2).sum((0, 2, 3))).detach()
    per_group = [sq[groups.group_of_unit == g] for g in range(groups.num_groups)]
    assert any(u.shape == direct.shape and torch.allclose(u, direct, rtol=1e-5) for u in per_group)
    # γ: α for the weakest unit of every group, 1 for the strongest
    gamma = groups.gamma(sq.sqrt(), alpha=16.0)
    for g in range(groups.num_groups):
        assert gamma[groups.group_of_unit == g].max().item() == pytest.approx(16.0)
        assert gamma[groups.group_of_unit == g].min().item() == pytest.approx(1.0)
    # scaling every weight by 3 scales the penalty by 9, and leaves the relative (scale-free) form unchanged
    scaled = {k: 3 * v for k, v in params.items()}
    absolute, relative = sparsity_penalty(groups, params)[0], sparsity_penalty(groups, params, relative=True)[0]
    assert sparsity_penalty(groups, scaled)[0].item() == pytest.approx(9 * absolute.item(), rel=1e-4)
    assert sparsity_penalty(groups, scaled, relative=True)[0].item() == pytest.approx(relative.item(), rel=1e-4)


def test_finetune_resume_continues_from_the_newest_full_checkpoint(cifar_small, tmp_path):
    kw = dict(max_steps=4, batch_size=32, disable_tqdm=True, resume=True, seed=0, logging_steps=1)
    torch.manual_seed(0)
    first = finetune(timm.create_model("cifar_resnet20", num_classes=10), cifar_small, str(tmp_path), **kw)
    assert os.path.isfile(tmp_path / "checkpoint-4" / "optimizer.pt")  # full state, so the schedule can continue
    torch.manual_seed(1)  # other initial weights: resuming must replace them with the checkpoint's, not train them
    again = finetune(timm.create_model("cifar_resnet20", num_classes=10), cifar_small, str(tmp_path), **kw)
    for a, b in zip(first.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(a, b)
    assert [e["step"] for e in again.log_history if "loss" in e] == [e["step"] for e in first.log_history
                                                                     if "loss" in e] == [1, 2, 3, 4]  # none rerun
