"""examples/train_metanetwork.py under ``accelerate launch``: it runs with two processes, saves a loadable
metanetwork with a model card, and gives the same weights as one process with the same global batch.

Two CPU processes need ``accelerate launch --multi_gpu --num_processes 2`` (torchrun; with no GPU visible,
Accelerate runs gloo DDP on the CPU): ``--cpu --num_processes 2`` starts a single process unless an MPI hostfile
is given.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import hf_metaprune as hm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(REPO, "..", "shared", "data", "cifar10")
ACCELERATE = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch"]  # `accelerate launch`
TIMEOUT = 300
MAX_STEPS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([REPO, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PYTHONWARNINGS="ignore", TOKENIZERS_PARALLELISM="false")
    return env


def _train_metanetwork(zoo: str, output_dir: str, launch: list[str], batch_size: int) -> str:
    cmd = [*ACCELERATE, *launch, "examples/train_metanetwork.py", "--zoo", zoo, "--dataset", DATA,
           "--max_train_samples", "1500", "--val_size", "300", "--num_eval_models", "1",
           "--output_dir", output_dir, "--max_steps", str(MAX_STEPS), "--per_device_train_batch_size", str(batch_size),
           "--hidden_size", "16", "--num_layers", "2", "--task_batch_size", "32", "--task_batches_per_step", "2",
           "--seed", "0", "--logging_steps", "1", "--save_strategy", "no", "--disable_tqdm", "true",
           # the published objective: the pruning-aware term's hard mask follows a ranking that a last-bit difference
           # between 1 and 2 processes can flip, and Adam turns last-bit noise on near-zero gradients of the relative
           # penalty into full-size steps; the equivalence under test is the data-parallel step itself
           "--prune_aware_weight", "0", "--sparsity_relative", "false", "--sparsity_lambda", "3e-3"]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory) -> str:
    """Three briefly trained CIFAR ResNet-20s (two to meta-train on, one held out), as a folder."""
    out = str(tmp_path_factory.mktemp("zoo"))
    data = hm.load_image_classification(DATA, val_size=300, max_train_samples=1500, max_test_samples=1)
    hm.train_zoo("cifar_resnet20", data, out, num_models=3, epochs=1, max_steps=20, batch_size=32,
                 learning_rate=0.05, report_to="none", disable_tqdm=True, use_cpu=True, logging_steps=100,
                 save_strategy="no", eval_strategy="no", load_best_model_at_end=False)
    return out


@pytest.fixture(scope="module")
def two_process_run(zoo_dir, tmp_path_factory) -> tuple[str, str]:
    out = str(tmp_path_factory.mktemp("metanetwork_2proc"))
    stdout = _train_metanetwork(zoo_dir, out, ["--multi_gpu", "--num_processes", "2",
                                                "--main_process_port", str(_free_port())], batch_size=1)
    return out, stdout


def test_train_metanetwork_two_processes(two_process_run):
    out, stdout = two_process_run
    assert "2 process(es)" in stdout, f"accelerate did not start two processes:\n{stdout[-2000:]}"
    final = os.path.join(out, "final")
    model = hm.MetaPrunerModel.from_pretrained(final)
    assert model.config.base_architecture == "cifar_resnet20"
    assert model.config.dataset == DATA
    assert model.config.num_data_models == 3
    for name in ("model.safetensors", "config.json", "README.md"):
        assert os.path.isfile(os.path.join(final, name)), name
    assert not os.path.exists(os.path.join(final, "training_args.bin"))  # no pickle in the model folder
    with open(os.path.join(final, "README.md")) as f:
        assert "cifar_resnet20" in f.read()
    # trained: the output layers of the decoders (zero at initialisation) have moved
    assert model.config.init_identity
    assert all(dec.out[-1].weight.abs().sum() > 0 for dec in model.edge_decoders.values())


def test_one_process_matches_two_processes(zoo_dir, two_process_run, tmp_path):
    """Same global batch of data models (1 x 2 vs 2 x 1) and seed: same metanetwork after MAX_STEPS steps."""
    two_out, _ = two_process_run
    one_out = str(tmp_path / "metanetwork_1proc")
    stdout = _train_metanetwork(zoo_dir, one_out, ["--cpu", "--num_processes", "1"], batch_size=2)
    assert "1 process(es)" in stdout
    one = load_file(os.path.join(one_out, "final", "model.safetensors"))
    two = load_file(os.path.join(two_out, "final", "model.safetensors"))
    assert one.keys() == two.keys()
    for name in one:
        torch.testing.assert_close(one[name], two[name], atol=1e-4, rtol=1e-4, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("script, dataset", [("examples/prune_bert.py", "trec"), ("examples/prune_vit.py", "cifar10")])
def test_transformers_examples_under_accelerate_launch(script, dataset, tmp_path):
    """The ViT / BERT examples, two processes: zoo, meta-training and finetuning run data-parallel, the main
    process writes the results and a pruned model that reloads with from_pretrained."""
    out = str(tmp_path / "run")
    cmd = [*ACCELERATE, "--multi_gpu", "--num_processes", "2", "--main_process_port", str(_free_port()), script,
           "--dataset", DATA.replace("cifar10", dataset), "--output_dir", out, "--max_train_samples", "600",
           "--val_size", "100", "--max_test_samples", "100", "--num_zoo_models", "2", "--zoo_epochs", "0.5",
           "--max_steps", "2", "--finetune_epochs", "0.5", "--hidden_size", "16", "--num_hidden_layers", "2",
           "--intermediate_size", "32", "--batch_size", "16", "--task_batch_size", "8"]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    assert proc.stdout.count("pruned model saved to") == 1  # main process only
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(os.path.join(out, "pruned"))
    assert config.model_type.startswith("metaprune_") and config.pruned_attention_heads
