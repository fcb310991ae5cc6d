"""benchmarks/cifar.py end to end on a sliver of real CIFAR-10: every method, every speed-up, table, JSON, plots."""
import importlib.util
import json
import os
import sys

import pytest
import torch

import hf_metaprune as hm
from conftest import CIFAR10

BENCHMARK = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "cifar.py")


@pytest.fixture(scope="module")
def cifar_benchmark():
    spec = importlib.util.spec_from_file_location("cifar_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules["cifar_benchmark"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules["cifar_benchmark"]


TINY = ["--dataset", CIFAR10, "--max_train_samples", "400", "--val_size", "100", "--max_test_samples", "100",
        "--num_seeds", "2", "--base_epochs", "0.5", "--num_zoo_models", "3", "--meta_max_steps", "2",
        "--meta_eval_steps", "1", "--probe_finetune_steps", "2", "--pre_epochs", "0.25", "--post_epochs", "0.25",
        "--latency_runs", "1", "--latency_batch_size", "4", "--hidden_size", "8", "--num_layers", "1",
        "--pruningnet_hidden_size", "4", "--search_population", "4", "--search_iterations", "1",
        "--search_eval_samples", "50", "--gcn_hidden_size", "4", "--rl_episodes", "2", "--rl_warmup", "1"]


def test_presets_and_overrides(cifar_benchmark):
    paper = cifar_benchmark.parse_args(["--preset", "paper"])
    assert (paper.architecture, paper.speed_ups, paper.base_epochs) == ("cifar_resnet56", [2.3, 3.0], 200.0)
    assert paper.output_dir == "outputs/cifar-paper"
    small = cifar_benchmark.parse_args(["--preset=cpu-small", "--post_epochs", "7", "--speed_ups", "2.5"])
    assert (small.architecture, small.post_epochs, small.speed_ups) == ("cifar_resnet20", 7.0, [2.5])
    assert len(small.candidates()) == 3 and small.candidates()[1]["sparsity_relative"] is True
    assert [c["residual_scale"] for c in small.candidates()] == [0.1, 0.1, 0.01]
    with pytest.raises(ValueError, match="unknown preset"):
        cifar_benchmark.parse_args(["--preset", "imagenet"])
    with pytest.raises(ValueError, match="zipped"):
        cifar_benchmark.parse_args(["--meta_learning_rate", "1e-3", "2e-3", "--meta_sparsity_lambda", "1", "2", "3"])
    with pytest.raises(ValueError, match="held-out"):
        cifar_benchmark.parse_args(["--num_zoo_models", "1"])
    with pytest.raises(ValueError, match="unknown"):
        cifar_benchmark.parse_args(["--methods", "depgraph", "magic"])
    with pytest.raises(ValueError, match="--zoo_seed 3 overlaps the base models' seeds 0..4"):
        cifar_benchmark.parse_args(["--num_seeds", "5"])
    # the zoo does not move with the number of base models (it is committed for the cpu preset)
    assert cifar_benchmark.parse_args(["--preset", "cpu", "--num_seeds", "1"]).zoo_seed == 3
    cpu = cifar_benchmark.parse_args(["--preset", "cpu"])
    assert (cpu.base_epochs, cpu.val_size, cpu.max_train_samples, cpu.pre_epochs, cpu.post_epochs) == (20.0, 5000, 0,
                                                                                                        3.0, 6.0)
    assert cpu.num_zoo_models - cpu.num_eval_zoo_models >= 8 and cpu.num_eval_zoo_models >= 2
    assert cpu.methods == ["depgraph-sl", "metanetwork-sl"]  # the comparison and the winner on validation
    ablation = cifar_benchmark.parse_args(["--preset", "cpu-ablation"])
    assert ablation.output_dir == cpu.output_dir and ablation.stop_after == "metanetwork"
    assert len(ablation.candidates()) == 9 and cpu.candidates()[0] in ablation.candidates()  # the winner is one


def test_cpu_small_runs_end_to_end_and_resumes(cifar_benchmark, tmp_path):
    argv = TINY + ["--output_dir", str(tmp_path / "out"), "--results_dir", str(tmp_path / "results"),
                   "--meta_learning_rate", "1e-3", "1e-2", "--meta_sparsity_lambda", "3e-3",
                   "--meta_sparsity_relative", "false", "true", "--meta_residual_scale", "0.1"]
    summary = cifar_benchmark.main(argv)
    prefix = tmp_path / "results" / "cifar_cpu-small"
    for suffix in (".json", ".md", "_accuracy.png", "_widths.png", "_training.png"):
        assert (tmp_path / "results" / f"cifar_cpu-small{suffix}").stat().st_size > 0
    written = json.loads(prefix.with_suffix(".json").read_text())
    assert written["table"] == summary["table"]
    assert written["versions"] == hm.library_versions() and written["versions"]["torch"] == torch.__version__.split("+")[0]

    methods = [name for name, _, _ in cifar_benchmark.METHODS.values()]
    assert [(r["method"], r["target_speed_up"]) for r in written["rows"]] == \
        [(m, s) for s in (2.0, 3.0) for m in methods]
    assert len(written["runs"]) == 2 * 2 * len(methods)  # seeds x speed-ups x methods
    for row in written["rows"]:
        assert len(row["test_accuracy"]["values"]) == 2
        assert abs(row["speed_up"]["mean"] - row["target_speed_up"]) < 0.1
        for a in row["val_accuracy"]["values"] + row["test_accuracy"]["values"]:  # counts of 100 images
            assert a * 100 == pytest.approx(round(a * 100)) and a > 0
        assert row["latency_s"]["mean"] > 0
        assert all(0 < a <= 1 for a in row["pruned_test_accuracy"]["values"])
    # every method pruned the same base models: same base record per seed, different seeds differ
    assert len(written["base_runs"]) == 2 and written["base_runs"][0] != written["base_runs"][1]
    # one pre-prune stage per family: DepGraph w/o SL and random share it, so their stage accuracies agree
    by_key = {(r["method"], r["seed"], r["target_speed_up"]): r for r in written["runs"]}
    assert by_key[("random", 0, 2.0)]["stage_val_accuracy"]["pre_prune"] == \
        by_key[("DepGraph w/o SL", 0, 2.0)]["stage_val_accuracy"]["pre_prune"]
    assert by_key[("uniform widths + SL", 1, 3.0)]["stage_val_accuracy"]["pre_prune"] == \
        by_key[("DepGraph + SL", 1, 3.0)]["stage_val_accuracy"]["pre_prune"]
    assert "transformed" in by_key[("metanetwork", 0, 3.0)]["stage_val_accuracy"]
    assert by_key[("metanetwork + SL", 0, 3.0)]["stage_val_accuracy"]["transformed"] == \
        by_key[("metanetwork", 0, 3.0)]["stage_val_accuracy"]["transformed"]
    for r in written["runs"]:  # accuracy right after pruning is measured before the finetune changes the model
        assert r["stage_val_accuracy"]["pruned"] == r["pruned_val_accuracy"]
    # the metanetwork was selected on validation probe scores among both candidates
    scores = [c["validation_scores"]["probe_accuracy"] for c in written["metanetwork_candidates"]]
    assert len(scores) == 2 and scores[written["selected_candidate"]] == max(scores)
    assert "| DepGraph + SL | 3× |" in prefix.with_suffix(".md").read_text()
    assert "| metanetwork transform, pruned | 3× |" in prefix.with_suffix(".md").read_text()
    assert "MetaPruning's search cost" in prefix.with_suffix(".md").read_text()
    searched = [r for r in written["runs"] if r["method"] == "MetaPruning"]
    assert len(searched) == 4 and all(r["genes_evaluated"] >= 4 and r["search_seconds"] > 0 for r in searched)
    assert all("pruningnet_full_width" in r["stage_val_accuracy"] for r in searched)
    for method in ("GraphPruning", "GraphPruning, evolutionary search"):  # one trained GraphPruning model, two searches
        searched = [r for r in written["runs"] if r["method"] == method]
        assert len(searched) == 4 and all(r["genes_evaluated"] >= 1 and r["search_seconds"] > 0 for r in searched)
        assert all("graphpruning_full_width" in r["stage_val_accuracy"] for r in searched)
        assert f"{method}'s search cost" in prefix.with_suffix(".md").read_text()
    assert by_key[("GraphPruning", 1, 2.0)]["stage_val_accuracy"]["graphpruning_full_width"] == \
        by_key[("GraphPruning, evolutionary search", 1, 2.0)]["stage_val_accuracy"]["graphpruning_full_width"]
    assert [d["seed"] for d in written["direct"]] == [0, 1]
    assert set(written["direct"][0]["speed_ups"]) == {"2", "3"}

    # a second call finds everything cached: same numbers, no training
    times = json.loads((tmp_path / "out" / "stage_seconds.json").read_text())
    assert set(times) >= {"base_models", "zoo_models", "meta_training", "pre_prune", "prune_and_finetune", "evaluation"}
    again = cifar_benchmark.main(argv)
    for key in ("val_accuracy", "test_accuracy", "speed_up"):
        assert [r[key]["values"] for r in again["rows"]] == [r[key]["values"] for r in summary["rows"]]
    times_again = json.loads((tmp_path / "out" / "stage_seconds.json").read_text())
    assert times_again["pre_prune"] == times["pre_prune"]
    assert times_again["prune_and_finetune"] == times["prune_and_finetune"]
    assert times_again["meta_training"] - times["meta_training"] < 30  # candidates are cached, not retrained


def test_stop_after_metanetwork_writes_the_candidate_table(cifar_benchmark, tmp_path):
    argv = TINY + ["--output_dir", str(tmp_path / "out"), "--results_dir", str(tmp_path / "results"),
                   "--num_seeds", "1", "--stop_after", "metanetwork", "--meta_prune_aware_weight", "0", "0.5",
                   "--meta_learning_rate", "1e-3", "--meta_sparsity_lambda", "3e-3", "--meta_residual_scale", "0.1"]
    summary = cifar_benchmark.main(argv)
    table = (tmp_path / "results" / "cifar_cpu-small_candidates.md").read_text()
    assert "| prune_aware_weight |" in table and table.count("\n") == 4  # header, rule, two candidates
    assert [c["prune_aware_weight"] for c in summary["metanetwork_candidates"]] == [0.0, 0.5]
    assert (tmp_path / "results" / "cifar_cpu-small_training.png").stat().st_size > 0
    assert not (tmp_path / "out" / "seed-0").exists()  # no method was run


def test_transfer_only_with_a_given_metanetwork(cifar_benchmark, tmp_path):
    """A trained metanetwork (a folder or a shipped name) prunes another depth on its own: no zoo, no meta-training,
    no comparison rows — the transfer table alone."""
    folder = str(tmp_path / "metapruner")
    hm.MetaPrunerModel(hm.MetaPrunerConfig(hidden_size=8, num_layers=1)).save_pretrained(folder)
    common = TINY + ["--output_dir", str(tmp_path / "out"), "--results_dir", str(tmp_path / "results"),
                     "--num_seeds", "1", "--methods", "depgraph-sl", "metanetwork-sl"]
    with pytest.raises(ValueError, match="--transfer_only needs --transfer_architectures"):
        cifar_benchmark.parse_args(common + ["--transfer_only", "true"])
    with pytest.raises(ValueError, match="give one of them"):
        cifar_benchmark.parse_args(common + ["--metanetwork", folder, "--stop_after", "metanetwork"])

    argv = common + ["--transfer_only", "true", "--metanetwork", folder, "--transfer_architectures", "cifar_resnet32",
                     "--speed_ups", "2", "3"]
    summary = cifar_benchmark.main(argv)
    written = json.loads((tmp_path / "results" / "cifar_cpu-small_transfer.json").read_text())
    assert written["transfer_table"] == summary["transfer_table"] and written["metanetwork"] == folder
    assert written["versions"] == hm.library_versions()
    assert [(r["architecture"], r["method"]) for r in written["transfer"]] == \
        [("cifar_resnet32", "DepGraph + SL"), ("cifar_resnet32", "metanetwork + SL")]
    for r in written["transfer"]:  # at the smallest target, measured before and after finetuning
        assert r["target_speed_up"] == 2.0 and abs(r["speed_up"] - 2.0) < 0.1
        assert 0 < r["pruned_test_accuracy"] <= 1 and 0 < r["test_accuracy"] <= 1
        assert {"pre_prune", "pruned", "finetuned"} <= set(r["stage_val_accuracy"])  # the whole pipeline
    assert "transformed" in written["transfer"][1]["stage_val_accuracy"]  # the given metanetwork transformed it
    assert "transformed" not in written["transfer"][0]["stage_val_accuracy"]
    assert set(json.loads((tmp_path / "out" / "stage_seconds.json").read_text())) == \
        {"transfer_models", "pre_prune", "prune_and_finetune"}  # no zoo, no meta-training, no comparison
    assert not (tmp_path / "out" / "seed-0").exists()
    table = (tmp_path / "results" / "cifar_cpu-small_transfer.md").read_text()
    assert "| cifar_resnet32 | metanetwork + SL | 2.0" in table
    assert cifar_benchmark.main(argv)["transfer"] == summary["transfer"]  # cached: the same records

    # --round_to: every pruned group a multiple of 8 channels, cached apart from the unrounded rows
    with pytest.raises(ValueError, match="--round_to must be >= 0"):
        cifar_benchmark.parse_args(common + ["--round_to", "-8"])
    cifar_benchmark.main(argv + ["--round_to", "8"])
    folder = tmp_path / "out" / "transfer-cifar_resnet32"
    assert (folder / "sparse-group_l2-2x" / "record.json").is_file()  # the unrounded rows are still there
    rounded = sorted(folder.glob("*-2x-round8/model"))
    assert len(rounded) == 2  # DepGraph + SL and metanetwork + SL
    for path in rounded:
        widths = [m.out_channels for m in hm.load_pruned(str(path)).modules() if isinstance(m, torch.nn.Conv2d)]
        assert all(w % 8 == 0 for w in widths), (path.parent.name, widths)
