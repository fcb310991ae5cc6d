"""The data-model zoo: independently trained networks of one family, the training examples of meta-training.

A zoo is a 🤗 ``datasets.Dataset`` with one row per network: safetensors bytes of its weights plus the
architecture, per-layer widths and metadata. It saves with ``save_to_disk`` / ``push_to_hub`` and loads back
offline with ``load_from_disk``. No pickle is involved anywhere. Architectures are timm names (CNNs) or
``transformers:<ModelClass>`` with the model's config as ``model_kwargs`` (a pruned 🤗 model's config rebuilds its
per-layer widths itself).
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import time
from typing import Any

import datasets
import safetensors.torch
import timm
import torch
import transformers
from accelerate import PartialState
from torch import nn

from ..data import ClassificationData, TextClassificationData
from ..pruning import pretrained as pruned_classes
from ..pruning import count_macs_and_params, module_widths, prune_to_speedup
from ..pruning.serialization import architecture_of, rebuild_pruned
from .finetune import finetune

ZOO_FEATURES = datasets.Features({
    "architecture": datasets.Value("string"),
    "model_kwargs": datasets.Value("string"),  # JSON
    "widths": datasets.Value("string"),  # JSON: per-layer in/out widths (see hf_metaprune.pruning.module_widths)
    "seed": datasets.Value("int64"),
    "val_accuracy": datasets.Value("float64"),
    "macs": datasets.Value("float64"),
    "params": datasets.Value("int64"),
    "weights": datasets.Value("binary"),  # safetensors bytes of the state dict
})


class DataModelZoo:
    """Read access to a zoo dataset: metadata columns and :meth:`model` to materialise row ``i``."""

    def __init__(self, dataset: datasets.Dataset):
        missing = set(ZOO_FEATURES) - set(dataset.column_names)
        if missing:
            raise ValueError(f"not a data-model zoo: columns {sorted(missing)} are missing "
                             f"(found {dataset.column_names})")
        self.dataset = dataset

    @classmethod
    def load(cls, source: str | os.PathLike) -> "DataModelZoo":
        """From a folder written by :meth:`save_to_disk` / :func:`train_zoo`, or a Hub dataset id."""
        path = os.path.expanduser(str(source))
        if os.path.isdir(path):
            if os.path.isdir(os.path.join(path, "zoo")):  # the output_dir of train_zoo
                path = os.path.join(path, "zoo")
            return cls(datasets.load_from_disk(path))
        try:
            return cls(datasets.load_dataset(str(source), split="train"))
        except Exception as e:
            raise FileNotFoundError(f"could not load the zoo '{source}': not a local folder, and loading it from "
                                    f"the Hub failed ({type(e).__name__}: {e}). Pass the output_dir of "
                                    "train_zoo / examples/train_zoo.py.") from e

    def save_to_disk(self, path: str | os.PathLike) -> None:
        self.dataset.save_to_disk(str(path))

    def push_to_hub(self, repo_id: str, **kwargs) -> Any:
        return self.dataset.push_to_hub(repo_id, **kwargs)

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def architectures(self) -> list[str]:
        return list(self.dataset["architecture"])

    def require_architecture(self) -> str:
        """The single architecture of this zoo; empty or mixed zoos are an error where one family is required."""
        archs = sorted(set(self.architectures))
        if not archs:
            raise ValueError("the data-model zoo is empty: train some data models first (train_zoo)")
        if len(archs) > 1:
            raise ValueError(f"the zoo mixes architectures {archs}; meta-training needs one family. "
                             "Select rows of one architecture (zoo.filter_architecture(...)).")
        return archs[0]

    def filter_architecture(self, architecture: str) -> "DataModelZoo":
        return DataModelZoo(self.dataset.filter(lambda a: a == architecture, input_columns="architecture"))

    def select(self, indices) -> "DataModelZoo":
        return DataModelZoo(self.dataset.select(list(indices)))

    def split(self, num_eval: int) -> tuple["DataModelZoo", "DataModelZoo"]:
        """Hold out the last ``num_eval`` data models (deterministic) for prune-and-probe evaluation."""
        n = len(self)
        if not 0 < num_eval < n:
            raise ValueError(f"cannot hold out {num_eval} of {n} data models: need at least one on each side")
        return self.select(range(n - num_eval)), self.select(range(n - num_eval, n))

    def model(self, i: int) -> nn.Module:
        """Data model ``i`` in eval mode, rebuilt from its architecture and widths."""
        row = self.dataset[int(i)]
        what = f"data model {i} (seed {row['seed']}, {row['architecture']})"
        try:
            state = safetensors.torch.load(row["weights"])
        except Exception as e:
            raise ValueError(f"{what}: weights are not readable safetensors bytes: {e}") from e
        kwargs = json.loads(row["model_kwargs"])
        if row["architecture"].startswith(HF_PREFIX):
            return _rebuild_transformers(row["architecture"], kwargs, state, what).eval()
        model = rebuild_pruned(row["architecture"], kwargs, json.loads(row["widths"]), state, source=what)
        return model.eval()

    @staticmethod
    def encode(model: nn.Module, architecture: str, model_kwargs: dict[str, Any], seed: int, val_accuracy: float,
               macs: float) -> dict[str, Any]:
        """One zoo row for ``model``."""
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        return {"architecture": architecture, "model_kwargs": json.dumps(model_kwargs),
                "widths": json.dumps(module_widths(model)), "seed": int(seed), "val_accuracy": float(val_accuracy),
                "macs": float(macs), "params": sum(p.numel() for p in model.parameters()),
                "weights": safetensors.torch.save(state)}


HF_PREFIX = "transformers:"
_CONFIG_BOOKKEEPING = ("transformers_version", "architectures", "model_type", "_name_or_path")


def _describe_transformers(model: transformers.PreTrainedModel) -> tuple[str, dict[str, Any]]:
    config = {k: v for k, v in model.config.to_dict().items() if k not in _CONFIG_BOOKKEEPING}
    return HF_PREFIX + type(model).__name__, config


def _rebuild_transformers(architecture: str, config: dict[str, Any], state: dict[str, torch.Tensor],
                          source: str) -> nn.Module:
    name = architecture.removeprefix(HF_PREFIX)
    cls = getattr(pruned_classes, name, None) or getattr(transformers, name, None)
    if cls is None:
        raise ValueError(f"{source}: unknown transformers model class '{name}'")
    model = cls(cls.config_class(**config))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{source}: the weights do not match the stored {name} config: {e}") from e
    return model


def _signature(architecture: str, kwargs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """What all data models of one zoo share (a lightly pruned 🤗 model is still the same family)."""
    if architecture.startswith(HF_PREFIX):
        base = HF_PREFIX + architecture.removeprefix(HF_PREFIX).removeprefix("MetaPruned")
        return base, {k: v for k, v in kwargs.items() if k not in pruned_classes.PRUNED_FIELDS}
    return architecture, kwargs


def train_zoo(
    architecture: str | transformers.PretrainedConfig,
    data: ClassificationData,
    output_dir: str | os.PathLike,
    num_models: int,
    epochs: float,
    seed: int = 0,
    prune_speed_up: float | None = None,
    finetune_epochs: float = 0.0,
    model_kwargs: dict[str, Any] | None = None,
    **finetune_kwargs: Any,
) -> DataModelZoo:
    """Train ``num_models`` data models with seeds ``seed, seed+1, ...`` and save them to ``output_dir/zoo``.

    ``architecture`` is a timm model name, or a 🤗 config (e.g. ``ViTConfig(...)``) built with
    ``AutoModelForImageClassification`` / ``AutoModelForSequenceClassification`` according to ``data``.

    With ``prune_speed_up`` (the published recipe uses ~1.3), each model is lightly pruned (group-L2) and
    finetuned for ``finetune_epochs`` so that widths vary across the zoo. The zoo is rewritten after every
    model, so an interrupted run resumes with the next missing seed. Extra keyword arguments go to
    :func:`hf_metaprune.training.finetune` (batch size, learning rate, ``TrainingArguments`` fields).
    """
    if num_models < 1:
        raise ValueError(f"num_models must be >= 1, got {num_models}")
    if isinstance(architecture, transformers.PretrainedConfig):
        config = copy.deepcopy(architecture)
        config.num_labels = data.num_classes
        auto = transformers.AutoModelForSequenceClassification if isinstance(data, TextClassificationData) \
            else transformers.AutoModelForImageClassification
        create = lambda: auto.from_config(config)  # noqa: E731
        with torch.device("meta"):
            architecture, model_kwargs = _describe_transformers(create())
    else:
        model_kwargs = {"num_classes": data.num_classes, **(model_kwargs or {})}
        create = lambda: timm.create_model(architecture, pretrained=False, **model_kwargs)  # noqa: E731
    zoo_dir = os.path.join(output_dir, "zoo")
    rows = DataModelZoo.load(zoo_dir).dataset.to_list() if os.path.isdir(zoo_dir) else []
    for row in rows:
        if _signature(row["architecture"], json.loads(row["model_kwargs"])) != _signature(architecture, model_kwargs):
            raise ValueError(f"{zoo_dir} already holds {row['architecture']} {row['model_kwargs']}; cannot add "
                             f"{architecture} {model_kwargs} to it — use another output_dir")
    done = {row["seed"] for row in rows}
    x = data.example_inputs()
    for s in range(seed, seed + num_models):
        if s in done:
            continue
        start = time.time()
        torch.manual_seed(s)
        model = create()
        if not architecture.startswith(HF_PREFIX) and architecture_of(model) is None:
            model.pretrained_cfg = {**getattr(model, "pretrained_cfg", {}), "architecture": architecture}
        run_dir = os.path.join(output_dir, "runs", f"seed{s}")
        result = finetune(model, data, run_dir, epochs=epochs, seed=s, **finetune_kwargs)
        if prune_speed_up:
            pruned = prune_to_speedup(result.model, x, prune_speed_up, importance="group_l2").model
            result = finetune(pruned, data, run_dir + "-pruned", epochs=finetune_epochs, seed=s, **finetune_kwargs)
        macs, _ = count_macs_and_params(result.model, x)
        name, kwargs = _describe_transformers(result.model) if architecture.startswith(HF_PREFIX) \
            else (architecture, model_kwargs)
        rows.append(DataModelZoo.encode(result.model, name, kwargs, s, result.val_accuracy, macs))
        state = PartialState()  # under `accelerate launch` every process trains; one writes
        state.wait_for_everyone()
        if state.is_main_process:
            _write_atomically(rows, zoo_dir)
            print(f"[zoo] {architecture} seed {s}: val acc {result.val_accuracy:.4f}, {macs / 1e6:.1f}M MACs, "
                  f"{time.time() - start:.0f}s ({len(rows)}/{num_models})", flush=True)
            shutil.rmtree(os.path.join(output_dir, "runs"), ignore_errors=True)  # checkpoints live in the zoo now
        state.wait_for_everyone()
    return DataModelZoo.load(zoo_dir)


def _write_atomically(rows: list[dict[str, Any]], zoo_dir: str) -> None:
    """Write the whole zoo to a temporary folder, then swap it in: an interruption never leaves half a zoo."""
    tmp, old = zoo_dir + ".tmp", zoo_dir + ".old"
    shutil.rmtree(tmp, ignore_errors=True)
    datasets.Dataset.from_list(rows, features=ZOO_FEATURES).save_to_disk(tmp)
    if os.path.isdir(zoo_dir):
        os.replace(zoo_dir, old)
    os.replace(tmp, zoo_dir)
    shutil.rmtree(old, ignore_errors=True)
