"""The methods registry, and checkpoints written before the metanetwork moved to ``methods/metapruner/``."""
from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch import nn
from transformers import AutoModel, PretrainedConfig, PreTrainedModel

import hf_metaprune as hm
from hf_metaprune.methods import METHODS, get_method, register_method

FIXTURES = Path(__file__).parent / "fixtures"


def _tiny_convnet() -> nn.Module:  # the network the fixture's reference transform was computed on
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1),
                         nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 10))


def test_a_metanetwork_saved_by_0_1_0_loads_and_transforms_exactly_as_it_did():
    path = FIXTURES / "metapruner-0.1.0"  # saved by hf_metaprune 0.1.0 (hf_metaprune/modeling_metapruner.py)
    reference = safetensors.torch.load_file(path / "reference.safetensors")
    model = _tiny_convnet().eval()
    model.load_state_dict({k[len("input."):]: v for k, v in reference.items() if k.startswith("input.")})
    for loaded in (hm.MetaPrunerModel.from_pretrained(path), AutoModel.from_pretrained(path)):
        assert type(loaded) is hm.MetaPrunerModel and loaded.config.hidden_size == 8
        out = loaded.transform(model, torch.zeros(1, 3, 8, 8)).state_dict()
        for name, value in out.items():
            torch.testing.assert_close(value, reference[f"output.{name}"], rtol=1e-5, atol=1e-6)
    assert not torch.equal(reference["output.0.weight"], reference["input.0.weight"])  # the transform edits


def test_the_metanetwork_is_registered_by_name_with_its_classes():
    method = get_method("metapruner")
    assert (method.config_class, method.model_class, method.trainer_class, method.training_arguments_class) == \
        (hm.MetaPrunerConfig, hm.MetaPrunerModel, hm.MetaPrunerTrainer, hm.MetaPrunerTrainingArguments)
    assert hm.get_method is get_method and METHODS["metapruner"] is method


def test_registry_refuses_unknown_names_configs_without_model_type_and_taken_names():
    with pytest.raises(ValueError, match=r"unknown pruning method 'nope'; registered methods: \[.*'metapruner'"):
        get_method("nope")

    class NoType(PretrainedConfig):
        model_type = ""

    class Other(PreTrainedModel):
        config_class = hm.MetaPrunerConfig

    with pytest.raises(ValueError, match="NoType.model_type is empty"):
        register_method("no-type", NoType, Other)
    with pytest.raises(ValueError, match="'metapruner' is already taken by MetaPrunerModel"):
        register_method("metapruner", hm.MetaPrunerConfig, Other)
    assert "no-type" not in METHODS and get_method("metapruner").model_class is hm.MetaPrunerModel
