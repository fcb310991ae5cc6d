"""CIFAR VGG-19 with BatchNorm (the variant used by DepGraph / meta-pruning on CIFAR-100)."""
from __future__ import annotations

import torch
from torch import nn
from timm.models import register_model

from ._builder import build, init_weights

VGG19_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512)


class CifarVGG(nn.Module):
    def __init__(self, cfg=VGG19_CFG, num_classes: int = 100, in_chans: int = 3, **_):
        super().__init__()
        self.num_classes = num_classes
        layers, in_chs = [], in_chans
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(in_chs, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                in_chs = v
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = in_chs
        self.classifier = nn.Linear(in_chs, num_classes)
        init_weights(self)

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


@register_model
def cifar_vgg19_bn(pretrained: bool = False, **kwargs) -> CifarVGG:
    return build(CifarVGG, "cifar_vgg19_bn", pretrained, **kwargs)
