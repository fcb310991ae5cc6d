"""Checkpoints: atomic saves that never destroy an earlier checkpoint, strict loads, clear errors (issue 10)."""
import json
import os

import datasets
import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from transformers import (AutoModelForSequenceClassification, BertConfig, BertForMaskedLM,
                          BertForSequenceClassification)

import hf_metaprune as hm
from hf_metaprune import load_pruned, prune_to_speedup, save_pruned
from hf_metaprune.data import ImageClassificationData, TensorImageDataset
from hf_metaprune.pruning import pretrained
from hf_metaprune.training import DataModelZoo, train_zoo
from hf_metaprune.training.zoo import ZOO_FEATURES, _describe_transformers

from conftest import example_input, make_model

BERT_INPUT = {"input_ids": torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(1)),
              "attention_mask": torch.tensor([[1] * 12, [1] * 9 + [0] * 3])}
BERT = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64)


def pruned_resnet20(speed_up: float = 2.0, seed: int = 0) -> torch.nn.Module:
    return prune_to_speedup(make_model("cifar_resnet20", seed=seed), example_input(32), speed_up).model


def pruned_bert(cls=BertForSequenceClassification, speed_up: float = 2.0, **config) -> torch.nn.Module:
    torch.manual_seed(0)
    return prune_to_speedup(cls(BertConfig(**BERT, **config)).eval(), BERT_INPUT, speed_up).model


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def folder_bytes(path) -> dict[str, bytes]:
    return {n: open(os.path.join(path, n), "rb").read() for n in sorted(os.listdir(path))}


def image_data(seed: int = 0, n_train: int = 64, n_val: int = 16, num_classes: int = 10) -> ImageClassificationData:
    g = torch.Generator().manual_seed(seed)
    split = lambda n: TensorImageDataset(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),  # noqa
                                         torch.randint(0, num_classes, (n,), generator=g))
    return ImageClassificationData(split(n_train), split(n_val), None, num_classes)


ZOO_KW = dict(epochs=1, batch_size=32, learning_rate=0.05, disable_tqdm=True, save_strategy="no", eval_strategy="no",
              load_best_model_at_end=False, logging_steps=1000, report_to="none")


# ---- A: save_pruned -----------------------------------------------------------------------------------------------

def test_a_failed_save_pruned_keeps_the_previous_checkpoint_bit_exact(tmp_path):
    first = pruned_resnet20(2.0)
    save_pruned(first, tmp_path)
    before = folder_bytes(tmp_path)
    second = pruned_resnet20(3.0, seed=1)
    with pytest.raises(TypeError, match=r"model_kwargs\['device'\].*device.*not JSON-serialisable"):
        save_pruned(second, tmp_path, model_kwargs={"device": torch.device("cpu")})
    with pytest.raises(TypeError, match=r"model_kwargs\['drop_path'\].*set.*not JSON-serialisable"):
        save_pruned(second, tmp_path, model_kwargs={"drop_path": {0.1}})
    with pytest.raises(TypeError, match="model_kwargs must be a dict"):
        save_pruned(second, tmp_path, model_kwargs=["num_classes", 10])
    assert folder_bytes(tmp_path) == before  # nothing written, no temporary files left behind
    assert_same_state(load_pruned(tmp_path), first)
    # a failure while writing the weights (disk full, Ctrl-C) leaves the old files too
    real_save_file = hm.pruning.serialization.save_file

    def failing_save_file(state, path, metadata=None):
        real_save_file(state, path, metadata=metadata)
        raise OSError("No space left on device")

    hm.pruning.serialization.save_file = failing_save_file
    try:
        with pytest.raises(OSError, match="No space left"):
            save_pruned(second, tmp_path)
    finally:
        hm.pruning.serialization.save_file = real_save_file
    assert folder_bytes(tmp_path) == before
    # re-saving over an earlier save_pruned checkpoint is an update
    save_pruned(second, tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["model.safetensors", "pruned_config.json"]
    assert_same_state(load_pruned(tmp_path), second)


def test_a_save_pruned_refuses_a_folder_holding_another_kind_of_checkpoint(tmp_path):
    pruned = pruned_resnet20()
    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig(**BERT, num_labels=3)).save_pretrained(tmp_path / "bert")
    hm.MetaPrunerModel(hm.MetaPrunerConfig(hidden_size=8, num_layers=1)).save_pretrained(tmp_path / "metapruner")
    (tmp_path / "weights").mkdir()
    save_file({"w": torch.ones(2)}, str(tmp_path / "weights" / "model.safetensors"))
    for name, fragment in [("bert", "config.json"), ("metapruner", "config.json"),
                           ("weights", "model.safetensors that save_pruned did not write")]:
        before = folder_bytes(tmp_path / name)
        with pytest.raises(FileExistsError, match=fragment):
            save_pruned(pruned, tmp_path / name)
        assert folder_bytes(tmp_path / name) == before, name
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="save_directory .* is a file"):
        save_pruned(pruned, tmp_path / "file")
    # other, unrelated files in the folder are fine and stay
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    save_pruned(pruned, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


# ---- B: load_pruned(device=...) -------------------------------------------------------------------------------------

def test_b_load_pruned_names_a_bad_or_unavailable_device(tmp_path, monkeypatch):
    save_pruned(pruned_resnet20(), tmp_path)
    with pytest.raises(ValueError, match="device='gpu0' is not a valid torch device"):
        load_pruned(tmp_path, device="gpu0")
    with pytest.raises(ValueError, match="device='meta'"):
        load_pruned(tmp_path, device="meta")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"device='cuda': no cuda device is available.*device='cpu'"):
        load_pruned(tmp_path, device="cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"device='cuda:3': this machine has 1 cuda device"):
        load_pruned(tmp_path, device="cuda:3")
    assert next(load_pruned(tmp_path, device=torch.device("cpu")).parameters()).device.type == "cpu"


# ---- C: pruned 🤗 models ----------------------------------------------------------------------------------------------

def test_c_pruned_transformers_model_refuses_missing_unexpected_and_mismatched_weights(tmp_path):
    pruned = pruned_bert(num_labels=3)
    pruned.save_pretrained(tmp_path)
    good = load_file(str(tmp_path / "model.safetensors"))
    loaded, info = AutoModelForSequenceClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert_same_state(loaded, pruned) and not any(info[k] for k in ("missing_keys", "unexpected_keys"))
    cases = [("missing keys.*classifier.weight", {k: v for k, v in good.items() if k != "classifier.weight"}),
             ("unexpected keys.*extra.bias", {**good, "extra.bias": torch.zeros(2)}),
             ("mismatched keys.*classifier.weight", {**good, "classifier.weight": torch.zeros(3, 5)})]
    for fragment, state in cases:
        save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
        with pytest.raises(ValueError, match=f"does not match the MetaPrunedBertForSequenceClassification.*{fragment}"):
            AutoModelForSequenceClassification.from_pretrained(tmp_path)
        with pytest.raises(ValueError, match=fragment):  # the class itself too, even when asked to ignore sizes
            type(pruned).from_pretrained(tmp_path, ignore_mismatched_sizes=True)
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        AutoModelForSequenceClassification.from_pretrained(tmp_path)


def test_c_tied_weights_are_not_refused(tmp_path):
    pruned = pruned_bert(BertForMaskedLM)  # decoder weight tied to the word embeddings: saved once
    pruned.save_pretrained(tmp_path)
    loaded = type(pruned).from_pretrained(tmp_path).eval()  # (no Auto class registered for masked LM)
    assert loaded.cls.predictions.decoder.weight is loaded.bert.embeddings.word_embeddings.weight
    with torch.no_grad():
        assert torch.equal(loaded(**BERT_INPUT).logits, pruned(**BERT_INPUT).logits)


def test_c_failed_save_pretrained_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    first = pruned_bert(num_labels=3)
    (tmp_path / "tokenizer.json").write_text("{}")  # saved beside the model: must survive every save
    first.save_pretrained(tmp_path)
    before = folder_bytes(tmp_path)
    assert set(before) == {"config.json", "model.safetensors", "modeling_metaprune.py", "tokenizer.json"}
    second = pruned_bert(speed_up=1.3, num_labels=3)
    import transformers.modeling_utils as modeling_utils

    real = modeling_utils.safe_save_file

    def failing(tensors, filename, metadata=None):
        real(tensors, filename, metadata=metadata)
        raise OSError("No space left on device")

    monkeypatch.setattr(modeling_utils, "safe_save_file", failing)
    with pytest.raises(OSError, match="No space left"):
        second.save_pretrained(tmp_path)
    monkeypatch.setattr(modeling_utils, "safe_save_file", real)
    monkeypatch.setattr(pretrained, "_remote_code", lambda *a: 1 / 0)  # fails before anything is written
    with pytest.raises(ZeroDivisionError):
        second.save_pretrained(tmp_path)
    monkeypatch.undo()
    assert folder_bytes(tmp_path) == before  # no staging folder left, nothing replaced
    assert_same_state(AutoModelForSequenceClassification.from_pretrained(tmp_path), first)
    # a sharded save then a single-file save: the stale shards and index must not shadow the new weights
    second.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    first.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == sorted(before)
    assert_same_state(AutoModelForSequenceClassification.from_pretrained(tmp_path), first)
    # a save_pruned checkpoint is not overwritten by save_pretrained
    save_pruned(pruned_resnet20(), tmp_path / "cnn")
    cnn = folder_bytes(tmp_path / "cnn")
    with pytest.raises(FileExistsError, match="save_pruned checkpoint"):
        first.save_pretrained(tmp_path / "cnn")
    assert folder_bytes(tmp_path / "cnn") == cnn


# ---- D: the zoo -------------------------------------------------------------------------------------------------------

def test_d_resuming_a_zoo_with_another_recipe_or_data_is_refused(tmp_path):
    data = image_data()
    zoo = train_zoo("cifar_resnet20", data, str(tmp_path), num_models=1, **ZOO_KW)
    assert zoo.recipe["epochs"] == 1 and zoo.recipe["data"]["num_train"] == 64
    manifest = json.loads((tmp_path / "zoo" / "zoo.json").read_text())
    assert manifest["num_rows"] == 1 and manifest["recipe"] == zoo.recipe
    weights = zoo.dataset["weights"]
    refused = [
        (dict(prune_speed_up=1.3, finetune_epochs=1), "prune_speed_up: None in the zoo, 1.3 now"),
        (dict(epochs=2), "epochs: 1 in the zoo, 2 now"),
        (dict(learning_rate=0.1), "training.learning_rate: 0.05 in the zoo, 0.1 now"),
        (dict(data=image_data(seed=1)), "data.sha256"),
        (dict(data=image_data(n_train=48)), "data.num_train: 64 in the zoo, 48 now"),
        (dict(model_kwargs={"in_chans": 3}), "another output_dir"),
    ]
    for change, fragment in refused:
        kw = {**ZOO_KW, "data": data, **change}
        with pytest.raises(ValueError, match=fragment):
            train_zoo("cifar_resnet20", kw.pop("data"), str(tmp_path), num_models=2, **kw)
    with pytest.raises(ValueError, match="another output_dir"):
        train_zoo("cifar_resnet32", data, str(tmp_path), num_models=2, **ZOO_KW)
    assert DataModelZoo.load(tmp_path).dataset["weights"] == weights  # nothing was added or rewritten
    # the same recipe resumes (progress bars and logging are not part of the recipe)
    resumed = train_zoo("cifar_resnet20", data, str(tmp_path), num_models=2, **{**ZOO_KW, "disable_tqdm": False,
                                                                                  "logging_steps": 7})
    assert resumed.dataset["seed"] == [0, 1] and resumed.dataset["weights"][:1] == weights
    # a zoo without a recipe (plain datasets.save_to_disk) cannot be resumed: its recipe is unknown
    resumed.dataset.save_to_disk(str(tmp_path / "plain" / "zoo"))
    with pytest.raises(ValueError, match="no training recipe"):
        train_zoo("cifar_resnet20", data, str(tmp_path / "plain"), num_models=3, **ZOO_KW)


def test_d_damaged_or_foreign_folders_are_clear_errors(tmp_path):
    data = image_data()
    train_zoo("cifar_resnet20", data, str(tmp_path / "run"), num_models=1, **ZOO_KW)
    zoo_dir = tmp_path / "run" / "zoo"
    (tmp_path / "empty").mkdir()
    (tmp_path / "random").mkdir()
    (tmp_path / "random" / "a.bin").write_bytes(os.urandom(64))
    (tmp_path / "random" / "state.txt").write_text("x")
    hm.MetaPrunerModel(hm.MetaPrunerConfig(hidden_size=8, num_layers=1)).save_pretrained(tmp_path / "metapruner")
    save_pruned(pruned_resnet20(), tmp_path / "cnn")
    cases = [("empty", "is not a data-model zoo: the folder is empty"),
             ("random", r"is not a data-model zoo: it holds \['a.bin', 'state.txt'\]"),
             ("metapruner", "is not a data-model zoo: it holds a model checkpoint"),
             ("cnn", "is not a data-model zoo: it holds a pruned model saved with save_pruned")]
    for name, fragment in cases:
        with pytest.raises(ValueError, match=fragment):
            DataModelZoo.load(tmp_path / name)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        DataModelZoo.load(tmp_path / "missing")
    with pytest.raises(ValueError, match="is a file"):
        DataModelZoo.load(tmp_path / "random" / "a.bin")
    # train_zoo into an output_dir whose 'zoo' folder is something else: refused, left as it was
    (tmp_path / "other" / "zoo").mkdir(parents=True)
    (tmp_path / "other" / "zoo" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="is not a data-model zoo"):
        train_zoo("cifar_resnet20", data, str(tmp_path / "other"), num_models=1, **ZOO_KW)
    assert os.listdir(tmp_path / "other" / "zoo") == ["notes.txt"]
    # DataModelZoo.save_to_disk refuses to replace a folder that is not a zoo
    with pytest.raises(FileExistsError, match="not a data-model zoo.*model checkpoint"):
        DataModelZoo.load(zoo_dir).save_to_disk(tmp_path / "metapruner")
    # a truncated .arrow file: caught by zoo.json's sizes, and by the reader when zoo.json is gone
    arrow = next(p for p in zoo_dir.iterdir() if p.suffix == ".arrow")
    content = arrow.read_bytes()
    arrow.write_bytes(content[:len(content) // 2])
    with pytest.raises(ValueError, match=r"is damaged: data-00000-of-00001.arrow should be \d+ bytes"):
        DataModelZoo.load(tmp_path / "run")
    (zoo_dir / "zoo.json").unlink()
    with pytest.raises(ValueError, match=f"the data-model zoo in '{zoo_dir}' cannot be read"):
        DataModelZoo.load(zoo_dir)


def test_d_check_data_refuses_a_text_zoo_with_image_data_and_other_data(tmp_path):
    torch.manual_seed(0)
    bert = BertForSequenceClassification(BertConfig(**BERT, num_labels=10)).eval()
    name, config = _describe_transformers(bert)
    assert name == "transformers:BertForSequenceClassification"
    row = DataModelZoo.encode(bert, name, config, seed=0, val_accuracy=0.5, macs=1.0)
    text_zoo = DataModelZoo(datasets.Dataset.from_list([row], features=ZOO_FEATURES))
    with pytest.raises(ValueError, match="BertForSequenceClassification takes text inputs but the data is image"):
        text_zoo.check_data(image_data())
    data = image_data()
    zoo = train_zoo("cifar_resnet20", data, str(tmp_path), num_models=1, **ZOO_KW)
    zoo.check_data(data)  # the data it was trained on
    zoo.select([0]).check_data(data)  # subsets keep the recipe
    with pytest.raises(ValueError, match="cifar_resnet20 has 10 classes, the data 5"):
        zoo.check_data(image_data(num_classes=5))
    with pytest.raises(ValueError, match="not the data the zoo was trained on.*data.sha256"):
        zoo.check_data(image_data(seed=3))
    zoo.check_data(image_data(seed=3), same_data=False)  # deliberate transfer
    with pytest.raises(TypeError, match="ImageClassificationData or TextClassificationData"):
        zoo.check_data({"pixel_values": torch.zeros(1)})


def test_frozen_parameters_stay_frozen_through_save_and_reload(tmp_path):
    model = timm.create_model("cifar_resnet20", num_classes=10)
    model.requires_grad_(False)
    model.fc.requires_grad_(True)
    x = torch.randn(1, 3, 32, 32)
    pruned = hm.prune_to_speedup(model, x, 1.5).model
    hm.save_pruned(pruned, tmp_path / "cnn")
    loaded = hm.load_pruned(tmp_path / "cnn")
    assert [n for n, p in loaded.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]

    torch.manual_seed(0)
    bert = BertForSequenceClassification(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                                    num_attention_heads=4, intermediate_size=64, num_labels=3))
    bert.bert.encoder.requires_grad_(False)
    flags = {n: p.requires_grad for n, p in bert.named_parameters()}
    ids = {"input_ids": torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(0))}
    hm.prune_to_speedup(bert, ids, 1.5).model.save_pretrained(tmp_path / "bert")
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path / "bert")
    assert {n: p.requires_grad for n, p in again.named_parameters()} == flags
