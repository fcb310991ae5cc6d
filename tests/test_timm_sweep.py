"""A sweep over timm CNN families beyond the ones tests/conftest.py names: each is traced to a graph that round-trips
bit-exactly and prunes to 1.5x without emptying a layer — or is refused with an UnsupportedModuleError naming the
module Torch-Pruning cannot follow. Tiny inputs (32×32) keep each case around a second."""
import re

import pytest
import timm
import torch

import hf_metaprune as hm

SUPPORTED = ["ghostnet_050", "regnety_002", "lcnet_050", "repvgg_a0", "hardcorenas_a", "resnext26ts",
             "mobilenetv3_small_050", "ese_vovnet19b_dw", "tinynet_e", "dla34"]
REFUSED = {  # model: (module named in the error, why), as regular expressions
    "mixnet_s": (r"blocks\.1\.0\.conv_pw", "hard-codes a channel count"),  # torch.split with fixed sizes
    # dual-path channel slicing: Torch-Pruning >= 1.6 maps it out of range, 1.5 prunes it into a broken forward
    "dpn48b": (r"features\.conv\d_\d.*", "cannot follow its channels|hard-codes a channel count"),
    "nf_resnet26": (r"stem\.conv", re.escape("parameters ['gain'] besides weight")),  # ScaledStdConv2d
}
X = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=10).eval()


@pytest.mark.parametrize("name", SUPPORTED)
def test_timm_family_round_trips_and_prunes(name):
    model = _model(name)
    again = hm.graph_to_model(hm.model_to_graph(model, X), model)
    for (key, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), key
    result = hm.prune_to_speedup(model, X, 1.5)
    assert 1.5 <= result.speed_up <= 1.5 * 1.01 and result.note == ""
    assert min(hm.pruning.module_widths(result.model)[n]["out"] for n in hm.pruning.module_widths(result.model)) >= 1
    assert result.model(X).shape == (1, 10)


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_timm_family_that_cannot_be_pruned_is_named(name):
    module, reason = REFUSED[name]
    with pytest.raises(hm.UnsupportedModuleError, match=rf"module '{module}' .*({reason})") as info:
        hm.prune_to_speedup(_model(name), X, 1.5)
    assert re.fullmatch(module, info.value.path)
