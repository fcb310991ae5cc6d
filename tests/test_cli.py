"""The ``hf-metaprune`` console script: every subcommand on tiny inputs, its errors, and the shipped metanetwork."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

import hf_metaprune as hm
from hf_metaprune import cli
from hf_metaprune.methods.base import model_card_template, shipped_checkpoints

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(REPO, "..", "shared", "data", "cifar10")
ZOO = os.path.join(REPO, "zoos", "cifar10-resnet20", "zoo")
SHIPPED = "cifar_resnet20-cifar10"
SMALL = ["--dataset", DATA, "--max_train_samples", "600", "--val_size", "100", "--max_test_samples", "100"]


def test_help_lists_every_command(capsys):
    assert cli.run(["--help"]) is None
    out = capsys.readouterr().out
    assert all(name in out for name in cli.COMMANDS)
    with pytest.raises(SystemExit) as e:
        cli.main(["frobnicate"])
    assert e.value.code == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


@pytest.mark.parametrize("command", sorted(set(cli.COMMANDS) - {"env"}))
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        cli.run([command, "--help"])
    assert e.value.code == 0
    assert f"usage: hf-metaprune {command}" in capsys.readouterr().out


def test_env_prints_versions_and_shipped_checkpoints(capsys):
    result = cli.run(["env"])
    out = capsys.readouterr().out
    assert f"torch-pruning    {result['versions']['torch-pruning']}" in out
    assert f"metapruner: {SHIPPED}" in out
    assert result["shipped"]["metapruner"] == [SHIPPED]


def test_prune_a_zoo_model_with_the_shipped_metanetwork(tmp_path, capsys):
    """No flag but MODEL, the speed-up and the output: the shipped metanetwork for the model's architecture is
    used, a table is printed, and the folder reloads with identical outputs."""
    out = str(tmp_path / "pruned")
    summary = cli.run(["prune", ZOO, "--model_index", "9", "--speed-up", "2", "--output", out])
    printed = capsys.readouterr().out
    assert "| original |" in printed and "| metapruner 2x |" in printed
    original, pruned = summary["rows"]
    assert original["macs"] / pruned["macs"] == pytest.approx(pruned["speed_up"], rel=1e-6)
    assert pruned["speed_up"] >= 2.0 and pruned["params"] < original["params"]
    assert summary["versions"]["hf_metaprune"] == hm.__version__
    reloaded = hm.load_pruned(out)
    # the same pipeline by hand gives the same network
    model = hm.DataModelZoo.load(ZOO).model(9)
    x = torch.randn(2, 3, 32, 32)
    metapruner = hm.MetaPrunerModel.from_pretrained(SHIPPED)
    expected = hm.prune_to_speedup(metapruner.transform(model, x[:1]), x[:1], 2.0).model
    torch.testing.assert_close(reloaded(x), expected(x))
    with open(os.path.join(out, "prune_results.json")) as f:
        assert json.load(f)["rows"][1]["model"] == "metapruner 2x"


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory) -> str:
    """Two briefly trained ResNet-20s on a 600-image slice (the second lightly pruned), from the zoo command."""
    zoo_dir = str(tmp_path_factory.mktemp("zoo"))
    result = cli.run(["zoo", "cifar_resnet20", "--output_dir", zoo_dir, "--num_models", "2", "--epochs", "0.2",
                      "--batch_size", "64", "--prune_speed_up", "1.0", "1.3", "--finetune_epochs", "0.1", *SMALL])
    assert len(result["val_accuracy"]) == 2
    return zoo_dir


def test_zoo(tiny_zoo):
    zoo = hm.DataModelZoo.load(tiny_zoo)
    assert len(zoo) == 2 and list(zoo.dataset["seed"]) == [0, 1]
    assert hm.count_macs_and_params(zoo.model(1), torch.randn(1, 3, 32, 32))[0] < \
        hm.count_macs_and_params(zoo.model(0), torch.randn(1, 3, 32, 32))[0]  # the second one lightly pruned


def test_prune_round_to_keeps_widths_multiples(tmp_path):
    out = str(tmp_path / "pruned")
    summary = cli.run(["prune", ZOO, "--model_index", "8", "--speed-up", "2", "--method", "depgraph",
                       "--round-to", "8", "--output", out])
    assert summary["rows"][1]["speed_up"] >= 2.0
    widths = hm.pruning.module_widths(hm.load_pruned(out))
    assert all(w["out"] % 8 == 0 for name, w in widths.items() if name != "fc")
    expected = hm.prune_to_speedup(hm.DataModelZoo.load(ZOO).model(8), torch.randn(1, 3, 32, 32), 2.0, round_to=8)
    assert widths == expected.widths


def test_prune_with_data_finetunes_and_reports_accuracy(tiny_zoo, tmp_path, capsys):
    out = str(tmp_path / "pruned")
    summary = cli.run(["prune", tiny_zoo, "--method", "depgraph", "--speed_up", "1.5", "--finetune_epochs", "0.25",
                       "--batch_size", "64", "--bf16", "--output", out, *SMALL])
    original, pruned = summary["rows"]
    assert set(original) >= {"val_accuracy", "test_accuracy"}
    data = hm.load_image_classification(DATA, val_size=100, max_train_samples=600, max_test_samples=100)
    again = hm.prune_to_speedup(hm.DataModelZoo.load(tiny_zoo).model(0), data.example_inputs(), 1.5).model
    assert pruned["pruned_val_accuracy"] == hm.evaluate_accuracy(again, data)  # measured before finetuning
    hm.pruning.recalibrate_batchnorm(again, hm.pruning.recalibration_batches(data, seed=0))
    assert pruned["recalibrated_val_accuracy"] == hm.evaluate_accuracy(again, data)
    printed = capsys.readouterr().out
    assert "val acc right after pruning" in printed and "+ BN recalibration" in printed
    reloaded = hm.load_pruned(out)
    assert hm.evaluate_accuracy(reloaded, data) == pytest.approx(pruned["val_accuracy"])
    assert hm.evaluate_accuracy(reloaded, data, split="test") == pytest.approx(pruned["test_accuracy"])


def test_prune_with_a_pruningnet_searches_a_structure(tiny_zoo, tmp_path):
    """MetaPruning through the same command: evolutionary search under the MACs budget, generated weights."""
    pruningnet = hm.PruningNetModel(hm.PruningNetConfig(base_architecture="cifar_resnet20",
                                                        base_model_kwargs={"num_classes": 10}, hidden_size=8))
    pruningnet.save_pretrained(tmp_path / "pruningnet")
    out = str(tmp_path / "pruned")
    summary = cli.run(["prune", tiny_zoo, "--method", "pruningnet", "--pruningnet", str(tmp_path / "pruningnet"),
                       "--speed_up", "1.5", "--search_iterations", "1", "--search_population", "4",
                       "--search_eval_samples", "50", "--output", out, *SMALL])
    original, pruned = summary["rows"]
    assert pruned["model"] == "pruningnet 1.5x" and 1.5 <= original["macs"] / pruned["macs"] <= 1.5 / 0.97 + 1e-6
    x = torch.randn(2, 3, 32, 32)
    assert hm.load_pruned(out)(x).shape == (2, 10)
    with pytest.raises(ValueError, match="needs --pruningnet"):
        cli.run(["prune", tiny_zoo, "--method", "pruningnet", "--output", str(tmp_path / "o2"), *SMALL])


def test_a_zoo_model_is_refused_data_it_was_trained_on():
    """The committed zoo was trained on 45k images: a 600-image slice's validation rows are its training images."""
    with pytest.raises(ValueError, match="not the data the zoo was trained on"):
        cli.run(["evaluate", ZOO, *SMALL])


def test_prune_a_transformers_folder_writes_a_folder_auto_classes_load(tmp_path):
    torch.manual_seed(0)
    config = BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, num_labels=3)
    BertForSequenceClassification(config).save_pretrained(tmp_path / "bert")
    out = str(tmp_path / "pruned")
    summary = cli.run(["prune", str(tmp_path / "bert"), "--method", "depgraph", "--speed_up", "1.5",
                       "--output", out])
    assert summary["rows"][1]["speed_up"] >= 1.5
    reloaded = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert sum(p.numel() for p in reloaded.parameters()) == summary["rows"][1]["params"]
    x = torch.randint(0, 200, (2, 16))
    assert reloaded(input_ids=x).logits.shape == (2, 3)


def test_bench_compares_methods_side_by_side(tmp_path, capsys):
    out = str(tmp_path / "bench")
    summary = cli.run(["bench", ZOO, "--model_index", "8", "--speed_ups", "1.5", "2", "--methods", "depgraph",
                       "random", "--output", out])
    assert [r["model"] for r in summary["rows"]] == ["original", "depgraph 1.5x", "depgraph 2x", "random 1.5x",
                                                     "random 2x"]
    assert all(r["speed_up"] >= r["target_speed_up"] for r in summary["rows"][1:])
    with open(os.path.join(out, "bench_results.json")) as f:
        assert json.load(f)["versions"]["torch-pruning"]
    assert not os.path.exists(os.path.join(out, "model.safetensors"))  # bench writes results, not models


def test_evaluate(tiny_zoo, capsys):
    summary = cli.run(["evaluate", tiny_zoo, "--model_index", "1", *SMALL])
    row = summary["rows"][0]
    data = hm.load_image_classification(DATA, val_size=100, max_train_samples=600, max_test_samples=100)
    model = hm.DataModelZoo.load(tiny_zoo).model(1)
    assert row["val_accuracy"] == hm.evaluate_accuracy(model, data)
    assert row["macs"] == hm.count_macs_and_params(model, data.example_inputs())[0]
    assert "| test acc |" in capsys.readouterr().out


def test_evaluate_other_metrics_come_from_evaluate_and_fail_clearly_offline(tiny_zoo, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")
    with pytest.raises(ValueError, match="--metrics no_such_metric: "):  # evaluate missing, or offline
        cli.run(["evaluate", tiny_zoo, "--metrics", "accuracy", "no_such_metric", *SMALL])
    assert "val accuracy" not in capsys.readouterr().out  # refused before any work


def test_meta_train(tiny_zoo, tmp_path, capsys):
    out = str(tmp_path / "meta")
    path = cli.run(["meta-train", "--zoo", tiny_zoo, "--output_dir", out, "--max_steps", "2", "--hidden_size", "8",
                    "--num_layers", "1", "--task_batch_size", "16", "--task_batches_per_step", "1",
                    "--probe_finetune_steps", "1", "--disable_tqdm", "true", *SMALL])
    assert path == os.path.join(out, "final")
    model = hm.MetaPrunerModel.from_pretrained(path)
    assert model.config.hidden_size == 8 and model.config.dataset == DATA
    assert set(model.config.validation_scores) >= {"probe_accuracy", "transformed_accuracy"}
    assert not any(name.endswith(".bin") for _, _, files in os.walk(out) for name in files)  # no pickle anywhere
    assert "1 training / 1 held-out data models" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["prune", "no/such/model", "--output", "o"], "no/such/model"),
    (["prune", "cifar_resnet20", "--speed_up", "0.5", "--output", "o"], "--speed_up must be > 1"),
    (["prune", "cifar_resnet20", "--method", "magic", "--output", "o"], "choose from"),
    (["prune", "cifar_resnet20", "--finetune_epochs", "1", "--output", "o"], "need --dataset"),
    (["prune", ZOO, "--model_index", "10", "--method", "depgraph", "--output", "o"], "holds 10 data models"),
    (["prune", "resnet18", "--output", "o"], "no shipped metanetwork for the architecture 'resnet18'"),
    (["evaluate", "cifar_resnet20"], "needs --dataset"),
    (["meta-train", "--output_dir", "o"], "needs --zoo, --dataset"),
])
def test_bad_input_is_one_clear_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HF_METAPRUNE_TRACEBACK", raising=False)
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"hf-metaprune {argv[0]}: error:") and message in err, err
    assert "Traceback" not in err


def test_prune_refuses_a_non_empty_output(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        cli.run(["prune", ZOO, "--method", "depgraph", "--output", str(tmp_path)])
    assert (tmp_path / "keep.txt").read_text() == "mine"


# ---- the shipped metanetwork ----------------------------------------------------------------------------------------
def test_shipped_metanetwork_reproduces_its_recorded_validation_scores():
    """Loaded offline by name, it gives exactly the transformed / pruned accuracy its card records (the two held-out
    data models of the committed zoo, the 5000-image validation split the benchmark carved)."""
    assert SHIPPED in shipped_checkpoints(hm.MetaPrunerModel)
    metapruner = hm.MetaPrunerModel.from_pretrained(SHIPPED)
    config = metapruner.config
    assert config.base_architecture == "cifar_resnet20" and config.training_command.startswith("python benchmarks/")
    zoo = hm.DataModelZoo.load(ZOO)
    data = hm.load_image_classification(DATA, val_size=5000, seed=0)
    x = data.example_inputs()
    transformed, pruned = [], []
    for i in range(len(zoo) - 2, len(zoo)):
        model = metapruner.transform(zoo.model(i), x)
        transformed.append(hm.evaluate_accuracy(model, data))
        pruned.append(hm.evaluate_accuracy(hm.prune_to_speedup(model, x, config.target_speed_ups[0]).model, data))
    scores = config.validation_scores
    assert sum(transformed) / 2 == pytest.approx(scores["transformed_accuracy"], abs=1e-4)
    assert sum(pruned) / 2 == pytest.approx(scores["pruned_accuracy"], abs=1e-4)


def test_a_built_wheel_holds_the_templates_the_shipped_checkpoint_and_the_console_script(tmp_path):
    """A non-editable install finds the model-card templates (copied from model_cards/ into the package) and the
    shipped metanetwork; built offline from the installed setuptools."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), REPO], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("hf_metaprune-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for template in sorted(os.listdir(os.path.join(REPO, "model_cards"))):
        assert f"hf_metaprune/model_cards/{template}" in names
    for file in ("config.json", "model.safetensors", "README.md"):
        assert f"hf_metaprune/methods/metapruner/pretrained/{SHIPPED}/{file}" in names
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "hf-metaprune = hf_metaprune.cli:main" in entry_points
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    probe = ("import hf_metaprune as hm; from hf_metaprune.methods.base import model_card_template as t; "
             f"print(t('metapruner')); m = hm.MetaPrunerModel.from_pretrained('{SHIPPED}'); "
             "print('cifar_resnet20' in m.model_card_text())")
    env = dict(os.environ, PYTHONPATH=str(target), HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    path, has_arch = proc.stdout.split()[-2:]
    assert path.startswith(str(target)) and path.endswith("hf_metaprune/model_cards/metapruner.md")
    assert has_arch == "True"
    assert model_card_template("metapruner") == os.path.join(REPO, "model_cards", "metapruner.md")
