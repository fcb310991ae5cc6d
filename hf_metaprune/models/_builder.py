"""What every CIFAR model shares: He initialisation and the timm entry-point plumbing."""
from __future__ import annotations

from torch import nn


def init_weights(model: nn.Module) -> None:
    """He (fan-out) init for convs, unit BN: the standard CIFAR ResNet / VGG recipe."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def build(cls: type[nn.Module], architecture: str, pretrained: bool, **kwargs) -> nn.Module:
    """Instantiate ``cls`` for a timm entry point; there are no published weights to load."""
    if pretrained:
        raise ValueError(f"no pretrained {architecture} weights are published with hf_metaprune; use pretrained=False")
    kwargs.pop("pretrained_cfg", None)
    kwargs.pop("pretrained_cfg_overlay", None)
    model = cls(**kwargs)
    model.pretrained_cfg = {"architecture": architecture, "num_classes": model.num_classes, "input_size": (3, 32, 32)}
    return model
