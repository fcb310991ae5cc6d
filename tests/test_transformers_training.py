"""Finetuning, the zoo and meta-training on 🤗 ViT (real CIFAR-10) and BERT (real TREC), end to end and offline."""
import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertConfig, ViTConfig

import hf_metaprune as hm
from conftest import CIFAR10

TREC = CIFAR10.replace("cifar10", "trec")


@pytest.fixture(scope="module")
def trec():
    return hm.load_text_classification(TREC, val_size=200, max_train_samples=800, max_test_samples=200,
                                       vocab_size=500)


@pytest.fixture(scope="module")
def cifar_tiny():
    return hm.load_image_classification(CIFAR10, val_size=100, max_train_samples=500, max_test_samples=100)


VIT = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=64)
COMMON = dict(report_to="none", disable_tqdm=True, use_cpu=True, logging_steps=5, batch_size=32)


def bert_config(data):
    return BertConfig(vocab_size=data.tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=64)


def test_text_data_is_tokenized_offline_and_split_without_leaks(trec):
    assert (len(trec.train), len(trec.validation), len(trec.test), trec.num_classes) == (600, 200, 200, 6)
    batch = trec.collator()([trec.train[i] for i in range(4)])
    assert batch["input_ids"].shape == batch["attention_mask"].shape and batch["labels"].shape == (4,)
    assert (batch["input_ids"][:, 0] == trec.tokenizer.cls_token_id).all()
    x = trec.example_inputs(3)
    assert set(x) == {"input_ids", "attention_mask"} and x["input_ids"].shape[0] == 3
    again = hm.load_text_classification(TREC, val_size=200, max_train_samples=800, max_test_samples=200,
                                        vocab_size=500)
    assert all(torch.equal(a, b) for a, b in zip(trec.validation.input_ids, again.validation.input_ids))


def test_unreachable_text_dataset_names_the_flag(tmp_path):
    with pytest.raises(FileNotFoundError, match="--dataset"):
        hm.load_text_classification(str(tmp_path / "nope"))


@pytest.mark.parametrize("kind", ["vit", "bert"])
def test_zoo_metatraining_and_pipeline(kind, trec, cifar_tiny, tmp_path):
    data, config = (cifar_tiny, VIT) if kind == "vit" else (trec, bert_config(trec))
    zoo = hm.train_zoo(config, data, tmp_path / "zoo", num_models=3, epochs=1, learning_rate=3e-3,
                       optim="adamw_torch", prune_speed_up=1.2, finetune_epochs=0.5, **COMMON)
    assert len(zoo) == 3 and zoo.dataset["architecture"][0].startswith("transformers:MetaPruned")
    model = zoo.model(0)  # lightly pruned, so its config carries its own widths
    assert model.config.num_labels == data.num_classes and model.config.pruned_shapes
    assert model.config.pruned_attention_heads
    # reloading a zoo of pruned 🤗 models gives the same networks
    reloaded = hm.DataModelZoo.load(tmp_path / "zoo" / "zoo").model(0)
    x = data.example_inputs(2)
    with torch.no_grad():
        out = [hm.training.classifier_logits(m, x if isinstance(x, dict) else {"pixel_values": x})
               for m in (model, reloaded)]
    assert torch.equal(*out)

    train_zoo, eval_zoo = zoo.split(1)
    graph = hm.model_to_graph(train_zoo.model(0), data.example_inputs())
    metapruner = hm.MetaPrunerModel(hm.MetaPrunerConfig.for_graphs([graph], hidden_size=8, num_layers=2,
                                                                   residual_scale=0.1))
    args = hm.MetaPrunerTrainingArguments(
        output_dir=str(tmp_path / "meta"), max_steps=4, learning_rate=1e-3, sparsity_lambda=1e-3,
        sparsity_relative=False, prune_aware_weight=0.0,
        task_batch_size=16, task_batches_per_step=2, per_device_train_batch_size=1, eval_strategy="steps",
        eval_steps=4, save_strategy="no", probe_speed_up=1.5, probe_finetune_steps=2, logging_steps=1,
        report_to="none", use_cpu=True, disable_tqdm=True, seed=0)
    trainer = hm.MetaPrunerTrainer(metapruner, args, train_zoo, data, eval_zoo=eval_zoo)
    trainer.train()
    logged = [h for h in trainer.state.log_history if "ce_loss" in h]
    assert logged and all(torch.isfinite(torch.tensor(h["ce_loss"])) for h in logged)
    scores = metapruner.config.validation_scores
    evals = [h for h in trainer.state.log_history if "eval_probe_accuracy" in h]
    assert scores["probe_accuracy"] == pytest.approx(evals[-1]["eval_probe_accuracy"], abs=1e-4)
    assert scores["baseline_probe_accuracy"] == pytest.approx(evals[-1]["eval_baseline_probe_accuracy"], abs=1e-4)

    result = hm.prune_and_finetune(eval_zoo.model(0), data, 1.5, str(tmp_path / "prune"), metapruner=metapruner,
                                   transform_epochs=0.5, finetune_epochs=0.5, distill=True, learning_rate=3e-3,
                                   optim="adamw_torch", **COMMON)
    assert result.prune.speed_up >= 1.5
    assert result.val_accuracy == hm.training.evaluate_accuracy(result.model, data)
    assert set(result.stage_val_accuracy) >= {"transformed", "pre_prune", "pruned", "finetuned"}
    result.model.save_pretrained(tmp_path / "pruned")
    if kind == "bert":
        loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "pruned").eval()
        assert hm.training.evaluate_accuracy(loaded, data) == hm.training.evaluate_accuracy(result.model, data)
