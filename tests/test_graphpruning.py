"""GraphPruning: the layer graph (coupled groups, data-flow edges with shortcuts), the GCN aggregator, generators fed
by its embeddings, the DDPG search with AMC's action wall, save / reload."""
import pytest
import torch
from transformers import AutoModel, TrainingArguments

import hf_metaprune as hm
from hf_metaprune.methods.graphpruning import DDPGAgent, GCNAggregator, clip_action, ddpg_search

from conftest import example_input


def _model(**kw):
    torch.manual_seed(0)
    config = hm.GraphPruningConfig(base_architecture="cifar_resnet20", base_model_kwargs={"num_classes": 10},
                                   hidden_size=4, gcn_hidden_size=8, **kw)
    return hm.GraphPruningModel(config).eval()


def _group_of(model, param: str, dim: int) -> int:
    s = next(s for s in model.groups.slices if s.param == param and s.dim == dim)
    return int(model.groups.group_of_unit[s.unit[0]])


def test_layer_graph_nodes_are_the_coupled_groups_and_edges_follow_every_layer_shortcuts_included():
    model = _model()
    groups = hm.ChannelGroups.from_model(model.network, example_input(32))
    assert model.num_genes == groups.num_groups == 12
    assert model.static_features.shape == (12, 5)
    edges = {tuple(e) for e in model.edge_index.t().tolist()}
    expected = set()
    for name, p in model.network.named_parameters():
        if p.dim() == 4 and name != "conv1.weight":  # every conv between two groups (the stem reads the image)
            a, b = _group_of(model, name, 1), _group_of(model, name, 0)
            if a != b:
                expected |= {(a, b), (b, a)}
    assert edges == expected and all(a != b for a, b in edges)
    for stage in (2, 3):  # the projection shortcuts link the residual widths of consecutive stages directly
        shortcut = f"layer{stage}.0.downsample.0.weight"
        assert (_group_of(model, shortcut, 1), _group_of(model, shortcut, 0)) in edges
    inner = _group_of(model, "layer1.1.conv1.weight", 0)  # a block's inner width meets only its stage's residual
    assert {b for a, b in edges if a == inner} == {_group_of(model, "layer1.1.conv1.weight", 1)}


def test_gcn_output_is_equivariant_to_relabelling_the_nodes():
    torch.manual_seed(0)
    gcn = GCNAggregator(6, 8, 2)
    x = torch.randn(7, 6)
    edges = torch.tensor([[0, 1, 1, 2, 2, 3, 4, 5, 5, 6], [1, 0, 2, 1, 3, 2, 5, 4, 6, 5]])
    perm = torch.tensor([3, 6, 0, 5, 1, 4, 2])  # new node i is old node perm[i]
    inverse = torch.argsort(perm)
    out = gcn(x, edges)
    torch.testing.assert_close(gcn(x[perm], inverse[edges]), out[perm])
    assert not torch.allclose(out[0], out[4])  # not a constant map


def test_generators_read_graph_embeddings_so_neighbours_widths_change_a_layers_weights():
    model = _model()
    x = example_input(32).repeat(2, 1, 1, 1)
    gene = [15] * 12
    with torch.no_grad():  # the generated, cropped network equals the masked one
        torch.testing.assert_close(model.generate(gene).model(x), model(x, gene=gene).logits, rtol=1e-4, atol=1e-5)
    # layer1.1.conv1's own groups keep their widths; a group two hops away changes: its context changes
    conv = model.generated.index("layer1.1.conv1.weight")
    own = set(model.layer_groups[conv].tolist())
    far = next(g for g in range(12) if g not in own)
    other = list(gene)
    other[far] = 3
    with torch.no_grad():
        assert not torch.allclose(model.layer_contexts(gene)[conv], model.layer_contexts(other)[conv])
    model.train()
    out = model(torch.randn(4, 3, 32, 32), labels=torch.tensor([0, 1, 2, 3]), gene=[7] * 12)
    out.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.aggregator.parameters())
    assert all(g.fc1.weight.grad is not None for g in model.generators.values())


def test_action_wall_keeps_every_random_episode_within_the_budget_window():
    model = _model()
    full = model.macs(model.full_gene())
    budget = full / 2.5
    lowest = 3  # ratio 0.19
    torch.manual_seed(1)
    landed = []
    for _ in range(20):
        gene = model.full_gene()
        for step in range(model.num_genes):
            wanted = int(torch.randint(lowest, 31, ()))
            gene[step] = clip_action(model, gene, step, wanted, lowest, budget, floor=0.97 * budget)
        assert model.macs(gene) <= budget
        landed.append(model.macs(gene) / budget)
    assert min(landed) >= 0.97  # the lower wall: no episode wastes the budget
    gene = model.full_gene()  # without a floor only the upper wall acts: a low action stays low
    assert clip_action(model, gene, 0, lowest, lowest, budget) == lowest


def test_ddpg_search_is_seeded_meets_the_budget_and_reloads(cifar_small, monkeypatch, tmp_path):
    model = _model()
    calls = []
    real = model.evaluate_gene

    def fitness(gene, recal, evals):  # a fast fitness on one batch, counted: no gene is evaluated twice
        calls.append(tuple(gene))
        return real(gene, recal[:1], evals[:1])

    monkeypatch.setattr(model, "evaluate_gene", fitness)
    kwargs = dict(episodes=4, warmup=3, batch_size=8, recalibration_samples=64, eval_samples=64,
                  eval_batch_size=64, disable_tqdm=True)
    first = ddpg_search(model, cifar_small, 2.0, seed=3, **kwargs)
    assert len(calls) == len(set(calls)) == first.evaluated
    assert first.speed_up >= 2.0 and first.macs <= model.macs(model.full_gene()) / 2.0
    assert len(first.history) == 7 and first.val_accuracy == max(h["best"] for h in first.history)
    calls.clear()
    second = ddpg_search(model, cifar_small, 2.0, seed=3, **kwargs)
    assert second.gene == first.gene and [h["reward"] for h in second.history] == \
        [h["reward"] for h in first.history]
    pruned = first.result.model
    assert hm.ChannelGroups.from_model(pruned, example_input(32)).group_sizes == first.widths
    model.save_pretrained(tmp_path / "gp")
    loaded = AutoModel.from_pretrained(tmp_path / "gp").eval()
    assert type(loaded) is hm.GraphPruningModel
    x = example_input(32)
    with torch.no_grad():
        assert torch.equal(loaded(x, gene=first.gene).logits, model(x, gene=first.gene).logits)


def test_trains_with_the_pruningnet_trainer(cifar_small, tmp_path):
    model = _model().train()
    before = [p.detach().clone() for p in model.aggregator.parameters()]
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=16,
                             report_to="none", save_strategy="no", disable_tqdm=True, use_cpu=True)
    hm.get_method("graphpruning").trainer_class(model, args, cifar_small).train()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.aggregator.parameters()))


def test_bad_input_gets_clear_errors(cifar_small):
    model = _model()
    with pytest.raises(ValueError, match="speed_up"):
        ddpg_search(model, cifar_small, 1.0)
    with pytest.raises(ValueError, match="cannot be met.*lowest_ratio"):
        ddpg_search(model, cifar_small, 50.0, lowest_ratio=0.5)
    with pytest.raises(ValueError, match="episodes"):
        ddpg_search(model, cifar_small, 2.0, episodes=0)
    with pytest.raises(TypeError, match="ClassificationData"):
        ddpg_search(model, object(), 2.0)
    with pytest.raises(ValueError, match="gcn_hidden_size"):
        hm.GraphPruningConfig(gcn_hidden_size=0)
    with pytest.raises(ValueError, match="a gene holds 12 indices"):
        model.node_embeddings([0] * 3)


def test_agent_learns_to_prefer_the_rewarded_action():
    """A one-step problem, reward = 1 − 4·(a − 0.8)²: with the published sizes and learning rates the actor ends
    near 0.8 (not at an edge of [0, 1])."""
    agent = DDPGAgent(2, tau=0.1, seed=0)
    s = torch.tensor([0.5, 0.5])
    g = torch.Generator().manual_seed(0)
    replay = []
    for _ in range(300):
        a = float(torch.rand((), generator=g))
        replay.append((s, a, 1 - 4 * (a - 0.8) ** 2, s, True))
    for _ in range(600):
        agent.update([replay[j] for j in torch.randint(0, len(replay), (32,), generator=g).tolist()])
    assert abs(agent.act(s) - 0.8) < 0.05


def test_graphpruning_example_runs_end_to_end(tmp_path):
    """examples/graphpruning.py (examples/metapruning.py --method graphpruning): train, DDPG search, finetune against
    the uniform multiplier, save the model and the searched network."""
    import json
    import subprocess
    import sys

    from test_accelerate import DATA, REPO, TIMEOUT, _env

    out = tmp_path / "run"
    cmd = [sys.executable, "examples/graphpruning.py", "--dataset", DATA, "--output_dir", str(out),
           "--max_train_samples", "600", "--val_size", "200", "--pruningnet_epochs", "0.1", "--hidden_size", "4",
           "--gcn_hidden_size", "8", "--rl_warmup", "2", "--rl_episodes", "2", "--recalibration_samples", "100",
           "--eval_samples", "100", "--finetune_epochs", "0.1", "--batch_size", "32", "--disable_tqdm", "true"]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    results = json.loads((out / "results.json").read_text())
    searched, uniform = results["rows"]
    assert searched["method"] == "GraphPruning (searched)" and searched["speed_up"] >= 2.0
    assert uniform["speed_up"] >= 2.0 and len(results["search_history"]) == 4
    assert hm.load_pruned(out / "searched") is not None
    assert hm.GraphPruningModel.from_pretrained(out / "graphpruning").config.validation_scores
