"""MetaPruning: the PruningNet (generated weights for any gene), its training and the evolutionary search."""
import os
import sys

import pytest
import torch
from torch import nn
from transformers import AutoModel, TrainingArguments

import hf_metaprune as hm
from hf_metaprune.methods.pruningnet import PUBLISHED_WIDTH_RATIOS, evolutionary_search, sample_genes
from hf_metaprune.training import evaluate_accuracy

from conftest import example_input
from test_pruning_primitives import _conv_linear_macs


def _pruningnet(name="cifar_resnet20", hidden_size=4, res=32, **kw):
    torch.manual_seed(0)
    return hm.PruningNetModel(hm.PruningNetConfig(base_architecture=name, base_model_kwargs={"num_classes": 10},
                                                  input_shape=[3, res, res], hidden_size=hidden_size, **kw)).eval()


def test_published_grid_and_genes_follow_the_coupled_groups():
    assert PUBLISHED_WIDTH_RATIOS[0] == 0.1 and PUBLISHED_WIDTH_RATIOS[-1] == 1.0 and len(PUBLISHED_WIDTH_RATIOS) == 31
    pn = _pruningnet()
    assert pn.num_genes == 12  # ResNet-20: stem+stage 1 tied, stages 2 and 3, 9 block-inner widths
    assert pn.groups.group_sizes == hm.ChannelGroups.from_model(pn.network, example_input(32)).group_sizes


@pytest.mark.parametrize("name,res", [("cifar_resnet20", 32), ("mobilenetv2_100", 64)])
def test_generated_weights_cropped_equal_the_masked_pruningnet_at_every_grid_point(name, res):
    pn = _pruningnet(name, hidden_size=2, res=res)
    x = example_input(res).repeat(2, 1, 1, 1)
    sizes = pn.groups.group_sizes
    grid = range(len(pn.config.width_ratios)) if name == "cifar_resnet20" else (0, 7, 15, 30)
    for i in grid:
        gene = [i] * pn.num_genes
        ratio = pn.config.width_ratios[i]
        assert pn.widths(gene) == [max(1, int(s * ratio + 1e-9)) for s in sizes]
        pruned = pn.generate(gene).model
        assert hm.ChannelGroups.from_model(pruned, x).group_sizes == pn.widths(gene)  # cropped shapes
        with torch.no_grad():
            torch.testing.assert_close(pruned(x), pn(x, gene=gene).logits, rtol=1e-4, atol=1e-5)
    mixed = [(g * 7) % 31 for g in range(pn.num_genes)]  # different widths per group
    with torch.no_grad():
        torch.testing.assert_close(pn.generate(mixed).model(x), pn(x, gene=mixed).logits, rtol=1e-4, atol=1e-5)


def test_macs_of_full_uniform_and_mixed_genes_match_an_independent_count():
    pn = _pruningnet()
    x = example_input(32)
    assert pn.macs(pn.full_gene()) == _conv_linear_macs(pn.network, x)
    for gene in ([15] * 12, [0] * 12, [(g * 5) % 31 for g in range(12)]):
        assert pn.macs(gene) == _conv_linear_macs(pn.generate(gene).model, x)


def test_gradients_reach_every_generator_and_the_shared_weights():
    pn = _pruningnet().train()
    out = pn(torch.randn(4, 3, 32, 32), labels=torch.tensor([0, 1, 2, 3]), gene=[0] * 12)
    out.loss.backward()  # every generator's hidden units start active, by construction of the initialisation
    for name, p in pn.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_stochastic_structure_sampling_trains_with_a_new_shared_gene_per_step(cifar_small, tmp_path):
    pn = _pruningnet().train()
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=32,
                             learning_rate=0.01, optim="sgd", report_to="none", disable_tqdm=True, use_cpu=True,
                             save_strategy="no", logging_steps=1, seed=3)
    trainer = hm.PruningNetTrainer(pn, args, cifar_small)
    genes = []
    original = pn.forward
    pn.forward = lambda **kw: (genes.append(kw["gene"]), original(**kw))[1]
    before = pn.generators["conv1__weight"].fc2.weight.detach().clone()
    trainer.train()
    assert len(genes) == 3 and len({tuple(g) for g in genes}) == 3  # one new gene per step
    assert genes == [trainer.sample_gene(step) for step in range(3)]  # seeded: the same on every process
    assert not torch.equal(before, pn.generators["conv1__weight"].fc2.weight)
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in trainer.state.log_history if "loss" in h)
    # the finetuning's optimizer (budgets compare), not transformers' momentum-free SGD; weights contiguous again
    group = trainer.optimizer.param_groups[0]
    assert (group["momentum"], group["nesterov"]) == (0.9, True)
    assert all(p.is_contiguous() for p in pn.parameters())


def test_batchnorm_recalibration_lifts_generated_weights_from_chance(tiny_zoo, cifar_small):
    pn = hm.PruningNetModel.from_network(tiny_zoo.model(0), hidden_size=4).eval()
    with torch.no_grad():  # statistics of another structure, as stochastic structure sampling leaves them
        for m in pn.network.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.fill_(3.0)
                m.running_var.fill_(0.01)
    gene = pn.full_gene()  # generated = the trained weights + ~1 % offsets
    trained = evaluate_accuracy(tiny_zoo.model(0), cifar_small)
    collate = cifar_small.collator(augment=False)
    evals = [collate([cifar_small.validation[j] for j in range(i, i + 100)]) for i in range(0, 500, 100)]
    recal = [collate([cifar_small.train[j] for j in range(i, i + 100)]) for i in range(0, 1000, 100)]
    with torch.no_grad():
        params = pn.generate_params(gene)
        raw = sum(int((torch.func.functional_call(pn.network, params, (b["pixel_values"],)).argmax(-1)
                       == b["labels"]).sum()) for b in evals) / 500
    recalibrated = pn.evaluate_gene(gene, recal, evals)
    assert raw < 0.2 and recalibrated > raw + 0.1 and recalibrated > trained - 0.08, (raw, recalibrated, trained)
    assert pn.network.layer1[0].bn1.running_mean.eq(3.0).all()  # the PruningNet's own statistics are untouched


def test_search_respects_the_budget_never_evaluates_twice_and_is_seeded(cifar_small, monkeypatch, tmp_path):
    pn = _pruningnet()
    evaluated = []

    def score(gene):  # a known fitness landscape: wider early layers are better
        return sum(v * (len(gene) - i) for i, v in enumerate(gene)) / 1e3

    def fitness(gene, recal, evals):
        evaluated.append(tuple(gene))
        return score(gene)

    monkeypatch.setattr(pn, "evaluate_gene", fitness)
    kw = dict(speed_up=2.0, window=0.05, num_iterations=4, population=12, top_k=12, num_parents=4, mutations=6,
              crossovers=6, recalibration_samples=64, eval_samples=64, disable_tqdm=True, seed=1)
    found = evolutionary_search(pn, cifar_small, **kw)
    assert len(evaluated) == len(set(evaluated)) == found.evaluated > 12  # no gene twice, later generations too
    full = pn.macs(pn.full_gene())
    for gene in evaluated:
        assert full / 2.0 * 0.95 <= pn.macs(gene) <= full / 2.0
    assert tuple(found.gene) == max(evaluated, key=score)
    assert 2.0 <= found.speed_up <= 2.0 / 0.95 and found.widths == pn.widths(found.gene)
    assert [h["best"] for h in found.history] == sorted(h["best"] for h in found.history)  # elitist
    first = list(evaluated)
    evaluated.clear()
    assert evolutionary_search(pn, cifar_small, **kw).gene == found.gene and evaluated == first
    hm.save_pruned(found.result.model, tmp_path / "searched", architecture="cifar_resnet20")
    x = example_input(32)
    assert torch.equal(hm.load_pruned(tmp_path / "searched")(x), found.result.model(x))


def test_search_with_real_fitness_returns_a_recalibrated_pruned_network(tiny_zoo, cifar_small):
    pn = hm.PruningNetModel.from_network(tiny_zoo.model(0), hidden_size=4).eval()
    found = pn.search(cifar_small, speed_up=1.5, window=0.1, num_iterations=2, population=4, top_k=4,
                      num_parents=2, mutations=2, crossovers=2, recalibration_samples=200, eval_samples=200,
                      disable_tqdm=True)
    assert found.evaluated >= 4 and 0 < found.val_accuracy <= 1
    acc = evaluate_accuracy(found.result.model, cifar_small)
    assert acc > 0.15  # generated weights of a trained network, statistics recalibrated: far above chance
    scratch = pn.generate(found.gene, from_scratch=True).model
    assert hm.ChannelGroups.from_model(scratch, example_input(32)).group_sizes == found.widths
    assert not torch.equal(scratch.conv1.weight, found.result.model.conv1.weight)


def test_pruningnet_saves_reloads_exactly_and_through_the_auto_classes(tmp_path):
    pn = _pruningnet()
    pn.save_pretrained(tmp_path / "pn")
    x, gene = example_input(32), [(g * 3) % 31 for g in range(12)]
    for loaded in (hm.PruningNetModel.from_pretrained(tmp_path / "pn"), AutoModel.from_pretrained(tmp_path / "pn")):
        assert type(loaded) is hm.PruningNetModel
        with torch.no_grad():
            assert torch.equal(loaded.eval()(x, gene=gene).logits, pn(x, gene=gene).logits)
    assert "PruningNet" in (tmp_path / "pn" / "README.md").read_text()
    assert hm.get_method("pruningnet").model_class is hm.PruningNetModel


def test_bad_input_gets_clear_errors(cifar_small):
    pn = _pruningnet()
    with pytest.raises(ValueError, match=r"speed_up=1000 cannot be met: even the narrowest gene"):
        pn.search(cifar_small, speed_up=1000.0, disable_tqdm=True)
    with pytest.raises(ValueError, match="a gene holds 12 indices into width_ratios"):
        pn(example_input(32), gene=[31] * 12)
    with pytest.raises(ValueError, match="a gene holds 12 indices"):
        pn.macs([1, 2])
    with pytest.raises(ValueError, match="'no_such_net' is not a timm model"):
        hm.PruningNetModel(hm.PruningNetConfig(base_architecture="no_such_net"))
    with pytest.raises(ValueError, match="config.base_architecture must name a timm model"):
        hm.PruningNetModel(hm.PruningNetConfig())
    with pytest.raises(ValueError, match="not a timm model"):
        hm.PruningNetModel.from_network(nn.Sequential(nn.Conv2d(3, 4, 3)))
    with pytest.raises(ValueError, match="width_ratios must be strictly increasing numbers in \\(0, 1\\] ending"):
        hm.PruningNetConfig(base_architecture="cifar_resnet20", width_ratios=[0.5, 0.9])
    with pytest.raises(ValueError, match="label_smoothing must be in"):
        hm.PruningNetConfig(label_smoothing=1.0)
    with pytest.raises(TypeError, match="data must be a ClassificationData"):
        hm.PruningNetTrainer(pn, TrainingArguments(output_dir="unused", report_to="none"), data=[1, 2])
    with pytest.raises(ValueError, match="window must be in"):
        pn.search(cifar_small, speed_up=2.0, window=0.0)


def test_metapruning_example_under_accelerate_launch(tmp_path):
    """examples/metapruning.py with two processes: the PruningNet trains data-parallel, the main process searches,
    compares with the uniform multiplier and writes the results, the PruningNet and the searched network."""
    from test_accelerate import ACCELERATE, DATA, REPO, TIMEOUT, _env, _free_port
    import json
    import subprocess

    out = tmp_path / "run"
    cmd = [*ACCELERATE, "--multi_gpu", "--num_processes", "2", "--main_process_port", str(_free_port()),
           "examples/metapruning.py", "--dataset", DATA, "--output_dir", str(out), "--max_train_samples", "800",
           "--val_size", "200", "--pruningnet_epochs", "0.1", "--hidden_size", "4", "--num_iterations", "2",
           "--population", "4", "--recalibration_samples", "200", "--eval_samples", "200", "--finetune_epochs",
           "0.1", "--batch_size", "32", "--disable_tqdm", "true"]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    assert proc.stdout.count("searched gene") == 1  # main process only
    results = json.loads((out / "results.json").read_text())
    searched, uniform = results["rows"]
    assert searched["speed_up"] >= 2.0 and uniform["speed_up"] >= 2.0 and "versions" in results
    assert hm.load_pruned(out / "searched") is not None
    assert hm.PruningNetModel.from_pretrained(out / "pruningnet").config.validation_scores


def test_sample_genes_are_distinct_seeded_and_inside_the_search_window():
    pruningnet = _pruningnet("cifar_resnet20")
    genes = sample_genes(pruningnet, 2.0, 6, window=0.05, seed=3)
    full = pruningnet.macs(pruningnet.full_gene())
    assert len({tuple(g) for g in genes}) == 6
    assert all(full / 2.0 * 0.95 <= pruningnet.macs(g) <= full / 2.0 for g in genes)
    assert sample_genes(pruningnet, 2.0, 6, window=0.05, seed=3) == genes
    with pytest.raises(ValueError, match="found 0 of 2 genes"):
        sample_genes(pruningnet, 2.0, 2, window=1e-9, attempts=50)


def test_kendall_tau_b_of_the_fidelity_benchmark():
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
    from metapruning_fidelity import kendall_tau_b

    assert kendall_tau_b([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert kendall_tau_b([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    # one discordant pair of six: (5 - 1) / 6; with a tie in y, C = 2, D = 0: 2 / sqrt((C + D) (C + D + 1))
    assert kendall_tau_b([1, 2, 3, 4], [1, 2, 4, 3]) == pytest.approx(4 / 6)
    assert kendall_tau_b([1, 2, 3], [1, 1, 2]) == pytest.approx(2 / (3 * 2) ** 0.5)


def test_metapruning_example_refuses_a_zoo_model_on_other_data(tmp_path):
    """--init_from a zoo model with a data split it was not trained on: its validation rows could be training rows
    of the zoo model, so the search's selection would be measured on seen data — refused before any training."""
    import importlib.util
    from test_accelerate import DATA, REPO

    spec = importlib.util.spec_from_file_location("metapruning_example", os.path.join(REPO, "examples",
                                                                                     "metapruning.py"))
    example = importlib.util.module_from_spec(spec)
    sys.modules["metapruning_example"] = example  # dataclasses look their module up there
    try:
        spec.loader.exec_module(example)
        with pytest.raises(ValueError, match=r"--init_from .*zoo.*not the data the zoo was trained on.*--val_size"):
            example.main(["--dataset", DATA, "--init_from", os.path.join(REPO, "zoos", "cifar10-resnet20", "zoo"),
                          "--max_train_samples", "2000", "--val_size", "200", "--output_dir", str(tmp_path)])
    finally:
        del sys.modules["metapruning_example"]


def test_round_to_rounds_every_generated_width_and_the_crop_still_equals_the_mask():
    pn = _pruningnet(round_to=8)
    x = example_input(32).repeat(2, 1, 1, 1)
    gene = [(g * 7) % 31 for g in range(pn.num_genes)]
    widths = pn.widths(gene)
    assert all(w % 8 == 0 for w in widths), widths
    assert widths == pn.groups.round_widths(_pruningnet().widths(gene), 8)
    pruned = pn.generate(gene).model
    assert hm.ChannelGroups.from_model(pruned, x).group_sizes == widths
    assert pn.macs(gene) == _conv_linear_macs(pruned, x[:1])
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), pn(x, gene=gene).logits, rtol=1e-4, atol=1e-5)
    for config in (hm.PruningNetConfig, hm.GraphPruningConfig):
        with pytest.raises(ValueError, match=f"{config.__name__}: round_to must be a positive integer"):
            config(base_architecture="cifar_resnet20", round_to=2.5)
