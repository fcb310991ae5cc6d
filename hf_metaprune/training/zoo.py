"""The data-model zoo: independently trained networks of one family, the training examples of meta-training.

A zoo is a 🤗 ``datasets.Dataset`` with one row per network: safetensors bytes of its weights plus the
architecture, per-layer widths and metadata. It saves with ``save_to_disk`` / ``push_to_hub`` and loads back
offline with ``load_from_disk``. No pickle is involved anywhere. Architectures are timm names (CNNs) or
``transformers:<ModelClass>`` with the model's config as ``model_kwargs`` (a pruned 🤗 model's config rebuilds its
per-layer widths itself).

A zoo folder also holds ``zoo.json``: the number of rows and the size of every data file (so a truncated or swapped
file is detected on load) and the recipe it was trained with (architecture, training hyper-parameters and a
fingerprint of the data), so that resuming :func:`train_zoo` with another recipe, or meta-training with other data,
is refused instead of silently mixing.
"""
from __future__ import annotations

import copy
import hashlib
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

from .._io import atomic_directory
from ..data import ClassificationData, ImageClassificationData, TextClassificationData
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

    def __init__(self, dataset: datasets.Dataset, recipe: dict[str, Any] | None = None):
        if not isinstance(dataset, datasets.Dataset):
            raise TypeError(f"DataModelZoo takes a datasets.Dataset, got {type(dataset).__name__} (to open a folder "
                            "use DataModelZoo.load)")
        missing = set(ZOO_FEATURES) - set(dataset.column_names)
        if missing:
            raise ValueError(f"not a data-model zoo: columns {sorted(missing)} are missing "
                             f"(found {dataset.column_names})")
        self.dataset = dataset
        self.recipe = recipe  # how the data models were trained (see train_zoo); None when unknown

    @classmethod
    def load(cls, source: str | os.PathLike) -> "DataModelZoo":
        """From a folder written by :meth:`save_to_disk` / :func:`train_zoo`, or a Hub dataset id.

        A folder that is not a zoo, or whose files are damaged or truncated, raises ``ValueError`` naming it; a
        local path that does not exist raises ``FileNotFoundError``.
        """
        path = os.path.expanduser(os.fspath(source))
        if os.path.isdir(path):
            if os.path.isdir(os.path.join(path, "zoo")) and not os.path.isfile(os.path.join(path, "state.json")):
                path = os.path.join(path, "zoo")  # the output_dir of train_zoo
            return cls._load_folder(path)
        if os.path.exists(path):
            raise ValueError(f"'{path}' is a file; a data-model zoo is a folder written by train_zoo / "
                             "DataModelZoo.save_to_disk (or a Hub dataset id)")
        if os.path.isabs(path) or path.startswith((".", "~")) or path.count("/") > 1:  # not a Hub id
            raise FileNotFoundError(f"no data-model zoo at '{path}': the folder does not exist. Pass the output_dir "
                                    "of train_zoo / examples/train_zoo.py.")
        try:
            return cls(datasets.load_dataset(str(source), split="train"))
        except Exception as e:
            raise FileNotFoundError(f"could not load the zoo '{source}': not a local folder, and loading it from "
                                    f"the Hub failed ({type(e).__name__}: {e}). Pass the output_dir of "
                                    "train_zoo / examples/train_zoo.py.") from e

    @classmethod
    def _load_folder(cls, path: str) -> "DataModelZoo":
        names = set(os.listdir(path))
        expected = ("expected a folder written by train_zoo / DataModelZoo.save_to_disk (state.json, "
                    "dataset_info.json and data-*.arrow files, or an output_dir holding such a 'zoo' folder)")
        if not {"state.json", "dataset_info.json"} <= names:
            raise ValueError(f"'{path}' is not a data-model zoo: {_describe_folder(names)}; {expected}")
        manifest = _read_manifest(path)
        if manifest is not None:
            for name, size in manifest["files"].items():
                file = os.path.join(path, name)
                actual = os.path.getsize(file) if os.path.isfile(file) else None
                if actual != size:
                    found = "missing" if actual is None else f"{actual} bytes"
                    raise ValueError(f"the data-model zoo in '{path}' is damaged: {name} should be {size} bytes "
                                     f"({MANIFEST_NAME}), found {found} (truncated or replaced?). Restore it or train "
                                     "the zoo again.")
        try:
            dataset = datasets.load_from_disk(path)
        except Exception as e:  # pyarrow / datasets errors for truncated or foreign files
            raise ValueError(f"the data-model zoo in '{path}' cannot be read: {type(e).__name__}: {e}. Its files are "
                             f"damaged or it is not a zoo; {expected}.") from e
        if not isinstance(dataset, datasets.Dataset):
            raise ValueError(f"'{path}' is a datasets DatasetDict (several splits), not a data-model zoo; {expected}")
        if manifest is not None and len(dataset) != manifest["num_rows"]:
            raise ValueError(f"the data-model zoo in '{path}' is damaged: {MANIFEST_NAME} records "
                             f"{manifest['num_rows']} data models, the files hold {len(dataset)}")
        try:
            return cls(dataset, recipe=manifest.get("recipe") if manifest else None)
        except ValueError as e:
            raise ValueError(f"'{path}': {e}") from e

    def save_to_disk(self, path: str | os.PathLike) -> None:
        """Write the zoo (and its ``zoo.json``: row count, file sizes, recipe) to the folder ``path``.

        The folder is written beside and swapped in whole; a folder that holds something else than a zoo raises
        ``FileExistsError`` and is left untouched.
        """
        path = os.fspath(path)
        if os.path.exists(path):
            names = set(os.listdir(path)) if os.path.isdir(path) else None
            if names is None or (names and "state.json" not in names):
                what = "a file" if names is None else _describe_folder(names)
                raise FileExistsError(f"DataModelZoo.save_to_disk: '{path}' exists and is not a data-model zoo "
                                      f"({what}); it would be replaced. Choose a new folder.")
        _save_folder(self.dataset, path, self.recipe)

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
        return DataModelZoo(self.dataset.filter(lambda a: a == architecture, input_columns="architecture"),
                            recipe=self.recipe)

    def select(self, indices) -> "DataModelZoo":
        return DataModelZoo(self.dataset.select(list(indices)), recipe=self.recipe)

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
        try:
            kwargs, widths = json.loads(row["model_kwargs"]), json.loads(row["widths"])
        except (TypeError, json.JSONDecodeError) as e:
            raise ValueError(f"{what}: model_kwargs / widths are not valid JSON: {e}") from e
        if row["architecture"].startswith(HF_PREFIX):
            return _rebuild_transformers(row["architecture"], kwargs, state, what).eval()
        model = rebuild_pruned(row["architecture"], kwargs, widths, state, source=what)
        return model.eval()

    def check_data(self, data: ClassificationData, same_data: bool = True) -> None:
        """Refuse ``data`` that the zoo's data models cannot have been trained on (``ValueError``).

        Checks the input kind (images / texts), the number of classes, the image channels and size (🤗 models
        with a fixed ``image_size``) and the vocabulary size (texts) of every architecture in the zoo. With
        ``same_data`` and a zoo that knows its recipe (written by :func:`train_zoo`), the data must also be the
        very data it was trained on (same sizes of the training / validation splits, same examples): otherwise
        validation scores would be measured on examples the data models were trained on. Call it where a zoo
        meets task data (``MetaPrunerTrainer.__init__``); ``same_data=False`` for deliberate transfer.
        """
        kind = _data_kind(data)
        problems = []
        pairs = sorted(set(zip(self.dataset["architecture"], self.dataset["model_kwargs"])))
        for architecture, kwargs_json in pairs:
            try:
                expects = _model_expects(architecture, json.loads(kwargs_json))
            except (TypeError, ValueError) as e:
                problems.append(f"{architecture}: cannot read its stored configuration ({e})")
                continue
            if expects["kind"] != kind:
                problems.append(f"{architecture} takes {expects['kind']} inputs but the data is {kind} "
                                f"({type(data).__name__})")
                continue
            if expects.get("num_classes") not in (None, data.num_classes):
                problems.append(f"{architecture} has {expects['num_classes']} classes, the data {data.num_classes}")
            if kind == "image":
                channels, size = tuple(data.train.images.shape[1:3]), data.train.images.shape[-1]
                if expects.get("channels") not in (None, channels[0]):
                    problems.append(f"{architecture} takes {expects['channels']}-channel images, the data has "
                                    f"{channels[0]} channels")
                if expects.get("image_size") not in (None, size):
                    problems.append(f"{architecture} takes {expects['image_size']}px images, the data's are {size}px")
            elif kind == "text" and expects.get("vocab_size") is not None and \
                    len(data.tokenizer) > expects["vocab_size"]:
                problems.append(f"{architecture} has a vocabulary of {expects['vocab_size']} tokens, the data's "
                                f"tokenizer {len(data.tokenizer)}: token ids would fall outside its embedding")
        if not problems and same_data and self.recipe and self.recipe.get("data"):
            diffs = _differences(self.recipe["data"], data_fingerprint(data), "data")
            if diffs:
                problems.append("the data is not the data the zoo was trained on (pass same_data=False to use it "
                                "anyway): " + "; ".join(diffs))
        if problems:
            raise ValueError("the data-model zoo does not fit this data: " + "; ".join(problems[:10]))

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
    prune_speed_up: float | list[float] | None = None,
    finetune_epochs: float = 0.0,
    finetune_learning_rate: float | None = None,
    model_kwargs: dict[str, Any] | None = None,
    **finetune_kwargs: Any,
) -> DataModelZoo:
    """Train ``num_models`` data models with seeds ``seed, seed+1, ...`` and save them to ``output_dir/zoo``.

    ``architecture`` is a timm model name, or a 🤗 config (e.g. ``ViTConfig(...)``) built with
    ``AutoModelForImageClassification`` / ``AutoModelForSequenceClassification`` according to ``data``.

    With ``prune_speed_up`` (the published recipe uses ~1.3), each model is lightly pruned (group-L2) and
    finetuned for ``finetune_epochs`` (at ``finetune_learning_rate``, default the training one) so that widths vary
    across the zoo. A list cycles over the seeds (seed ``s`` gets entry ``s % len``; ``1.0`` leaves that model
    unpruned), e.g. ``[1.0, 1.3, 1.0, 1.6]`` prunes every second model to two different widths. The zoo is rewritten
    after every
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
    speed_ups = _speed_up_cycle(prune_speed_up)
    post_prune_kwargs = dict(finetune_kwargs)
    if finetune_learning_rate is not None:
        post_prune_kwargs["learning_rate"] = finetune_learning_rate
    recipe = make_recipe(architecture, model_kwargs, data, epochs, speed_ups, finetune_epochs, finetune_kwargs,
                         finetune_learning_rate)
    zoo_dir = os.path.join(output_dir, "zoo")
    rows, existing = [], None
    if os.path.exists(zoo_dir):
        existing = DataModelZoo.load(zoo_dir)  # a folder that is not a zoo is refused here, never overwritten
        rows = existing.dataset.to_list()
    for row in rows:
        if _signature(row["architecture"], json.loads(row["model_kwargs"])) != _signature(architecture, model_kwargs):
            raise ValueError(f"{zoo_dir} already holds {row['architecture']} {row['model_kwargs']}; cannot add "
                             f"{architecture} {model_kwargs} to it — use another output_dir")
    if rows:
        check_recipe(existing.recipe, recipe, zoo_dir)
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
        result = finetune(model, data, run_dir, epochs=epochs, seed=s, resume=True, **finetune_kwargs)
        speed_up = speed_ups[s % len(speed_ups)] if speed_ups else 1.0
        if speed_up > 1.0:
            pruned = prune_to_speedup(result.model, x, speed_up, importance="group_l2").model
            result = finetune(pruned, data, run_dir + "-pruned", epochs=finetune_epochs, seed=s, resume=True,
                              **post_prune_kwargs)
        macs, _ = count_macs_and_params(result.model, x)
        name, kwargs = _describe_transformers(result.model) if architecture.startswith(HF_PREFIX) \
            else (architecture, model_kwargs)
        rows.append(DataModelZoo.encode(result.model, name, kwargs, s, result.val_accuracy, macs))
        state = PartialState()  # under `accelerate launch` every process trains; one writes
        state.wait_for_everyone()
        if state.is_main_process:
            _write_atomically(rows, zoo_dir, recipe)
            print(f"[zoo] {architecture} seed {s}: val acc {result.val_accuracy:.4f}, {macs / 1e6:.1f}M MACs, "
                  f"{time.time() - start:.0f}s ({len(rows)}/{num_models})", flush=True)
            shutil.rmtree(os.path.join(output_dir, "runs"), ignore_errors=True)  # checkpoints live in the zoo now
        state.wait_for_everyone()
    return DataModelZoo.load(zoo_dir)


def _speed_up_cycle(prune_speed_up: float | list[float] | tuple[float, ...] | None) -> list[float] | None:
    if prune_speed_up is None or prune_speed_up == 0:
        return None
    values = list(prune_speed_up) if isinstance(prune_speed_up, (list, tuple)) else [prune_speed_up]
    if not values or any(not isinstance(v, (int, float)) or isinstance(v, bool) or not v >= 1.0 for v in values):
        raise ValueError(f"prune_speed_up must be a MACs speed-up >= 1 or a non-empty list of them (1.0: leave that "
                         f"model unpruned), got {prune_speed_up!r}")
    return [float(v) for v in values] if any(v > 1.0 for v in values) else None


def _write_atomically(rows: list[dict[str, Any]], zoo_dir: str, recipe: dict[str, Any] | None = None) -> None:
    """Write the whole zoo to a temporary folder, then swap it in: an interruption never leaves half a zoo."""
    _save_folder(datasets.Dataset.from_list(rows, features=ZOO_FEATURES), zoo_dir, recipe)


# ---- zoo.json: integrity and recipe ------------------------------------------------------------------------------

MANIFEST_NAME = "zoo.json"
MANIFEST_VERSION = 1
RECIPE_VERSION = 1
# finetune / TrainingArguments keywords that change how training is shown or where it runs, not the data models
NOT_RECIPE = ("disable_tqdm", "report_to", "run_name", "use_cpu", "no_cuda", "log_level", "log_level_replica",
              "log_on_each_node", "save_total_limit", "save_safetensors", "save_only_model", "overwrite_output_dir",
              "push_to_hub", "ddp_find_unused_parameters", "ddp_backend", "ddp_timeout", "torch_compile",
              "torch_compile_backend", "torch_compile_mode", "include_num_input_tokens_seen", "skip_memory_metrics")
NOT_RECIPE_PREFIXES = ("logging_", "hub_", "dataloader_")


def _save_folder(dataset: datasets.Dataset, path: str, recipe: dict[str, Any] | None) -> None:
    with atomic_directory(path) as tmp:
        dataset.save_to_disk(tmp)
        files = {n: os.path.getsize(os.path.join(tmp, n)) for n in sorted(os.listdir(tmp)) if n.endswith(".arrow")}
        manifest = {"format_version": MANIFEST_VERSION, "num_rows": len(dataset), "files": files, "recipe": recipe}
        with open(os.path.join(tmp, MANIFEST_NAME), "w") as f:
            json.dump(manifest, f, indent=2)


def _read_manifest(path: str) -> dict[str, Any] | None:
    file = os.path.join(path, MANIFEST_NAME)
    if not os.path.isfile(file):
        return None  # written by plain datasets.save_to_disk or an older hf_metaprune: no integrity data
    try:
        with open(file) as f:
            manifest = json.load(f)
        if not (isinstance(manifest.get("files"), dict) and isinstance(manifest.get("num_rows"), int)
                and isinstance(manifest.get("recipe"), (dict, type(None)))):
            raise ValueError("expected 'num_rows', 'files' and 'recipe'")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as e:
        raise ValueError(f"the data-model zoo in '{path}' is damaged: {file} is not a valid zoo manifest ({e})") from e
    return manifest


def _describe_folder(names: set[str]) -> str:
    if not names:
        return "the folder is empty"
    if "pruned_config.json" in names:
        return "it holds a pruned model saved with save_pruned (pruned_config.json)"
    if "config.json" in names:
        return "it holds a model checkpoint (config.json), e.g. a MetaPrunerModel or a 🤗 model"
    if "dataset_dict.json" in names:
        return "it holds a datasets DatasetDict (dataset_dict.json), not a single zoo"
    shown = sorted(names)
    return f"it holds {shown[:5]}{' ...' if len(shown) > 5 else ''}"


def _jsonable(value: Any) -> Any:
    """``value`` as canonical JSON data (so that old and new recipes compare equal exactly when they are)."""
    def default(o: Any) -> Any:
        if isinstance(o, (torch.dtype, torch.device)):
            return str(o)
        if isinstance(o, (set, frozenset)):
            return sorted(map(str, o))
        return f"<{type(o).__name__}>"  # objects (a teacher model, callbacks): their type is what can be compared
    return json.loads(json.dumps(value, sort_keys=True, default=default))


def _data_kind(data: Any) -> str:
    if isinstance(data, TextClassificationData):
        return "text"
    if isinstance(data, ImageClassificationData):
        return "image"
    raise TypeError(f"data must be an ImageClassificationData or TextClassificationData (hf_metaprune.data), got "
                    f"{type(data).__name__}")


def data_fingerprint(data: ClassificationData) -> dict[str, Any]:
    """A cheap description of ``data`` that differs for other data: kind, classes, split sizes, input shape or
    vocabulary, and a hash of the first labels and inputs of the training and validation splits."""
    kind = _data_kind(data)
    fp: dict[str, Any] = {"kind": kind, "num_classes": int(data.num_classes), "num_train": len(data.train),
                          "num_validation": len(data.validation)}
    h = hashlib.sha256()
    for split in (data.train, data.validation):
        h.update(split.labels[:1024].cpu().numpy().tobytes())
        if kind == "image":
            h.update(split.images[:16].contiguous().cpu().numpy().tobytes())
        else:
            for ids in split.input_ids[:16]:
                h.update(ids.cpu().numpy().tobytes())
    if kind == "image":
        fp.update(image_shape=list(data.train.images.shape[1:]), mean=list(data.mean), std=list(data.std))
    else:
        fp.update(vocab_size=len(data.tokenizer))
    fp["sha256"] = h.hexdigest()[:32]
    return _jsonable(fp)


def make_recipe(architecture: str, model_kwargs: dict[str, Any], data: ClassificationData, epochs: float,
                prune_speed_up: float | list[float] | None, finetune_epochs: float, finetune_kwargs: dict[str, Any],
                finetune_learning_rate: float | None = None) -> dict[str, Any]:
    """Everything that makes two data models of one zoo comparable (the seed aside)."""
    family, kwargs = _signature(architecture, model_kwargs)
    training = {k: v for k, v in finetune_kwargs.items()
                if k not in NOT_RECIPE and not k.startswith(NOT_RECIPE_PREFIXES)}
    return _jsonable({
        "format_version": RECIPE_VERSION, "architecture": family, "model_kwargs": kwargs, "epochs": epochs,
        "prune_speed_up": _recipe_speed_up(prune_speed_up),
        "finetune_epochs": finetune_epochs if prune_speed_up else None,
        **({"finetune_learning_rate": finetune_learning_rate}
           if prune_speed_up and finetune_learning_rate is not None else {}),
        "training": training, "data": data_fingerprint(data)})


def _recipe_speed_up(prune_speed_up: float | list[float] | None) -> float | list[float] | None:
    """One speed-up for every model is recorded as a number (as zoos written before cycles existed)."""
    cycle = _speed_up_cycle(prune_speed_up)
    return None if cycle is None else cycle[0] if len(cycle) == 1 else cycle


def _flatten(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out or {prefix: {}}
    return {prefix: value}


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    a, b = _flatten(old, prefix), _flatten(new, prefix)
    missing = object()
    label = lambda k: f"{k} (hash of the first examples)" if k.endswith("sha256") else k  # noqa: E731
    return [f"{label(k)}: {a.get(k, '(not set)')!r} in the zoo, {b.get(k, '(not set)')!r} now"
            for k in sorted(set(a) | set(b)) if a.get(k, missing) != b.get(k, missing)]


def check_recipe(old: dict[str, Any] | None, new: dict[str, Any], zoo_dir: str) -> None:
    """Refuse to add data models trained with ``new`` to a zoo trained with ``old`` (``ValueError``)."""
    if old is None:
        raise ValueError(f"{zoo_dir} holds data models but no training recipe ({MANIFEST_NAME} is missing or has "
                         "none: written by plain datasets.save_to_disk or an older hf_metaprune), so resuming cannot "
                         "check that new data models are trained the same way — use another output_dir")
    diffs = _differences(old, new)
    if diffs:
        shown = "; ".join(diffs[:12]) + (f"; ... ({len(diffs) - 12} more)" if len(diffs) > 12 else "")
        raise ValueError(f"{zoo_dir} was trained with another recipe, so new data models would not be comparable "
                         f"with its existing ones: {shown} — use another output_dir (or the same "
                         "arguments and data as before)")


def _model_expects(architecture: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """What a zoo architecture takes as input: kind, classes, image channels / size or vocabulary size."""
    if architecture.startswith(HF_PREFIX):
        name = architecture.removeprefix(HF_PREFIX)
        cls = getattr(pruned_classes, name, None) or getattr(transformers, name, None)
        if cls is None:
            raise ValueError(f"unknown transformers model class '{name}'")
        config = cls.config_class(**kwargs)
        text = cls.main_input_name == "input_ids"
        out = {"kind": "text" if text else "image", "num_classes": getattr(config, "num_labels", None)}
        if text:
            out["vocab_size"] = getattr(config, "vocab_size", None)
        else:
            size = getattr(config, "image_size", None)
            out.update(channels=getattr(config, "num_channels", None),
                       image_size=size if isinstance(size, int) else None)
        return out
    return {"kind": "image", "num_classes": kwargs.get("num_classes"), "channels": kwargs.get("in_chans", 3)}
