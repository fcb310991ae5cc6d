"""CIFAR model definitions, registered with timm so ``timm.create_model("cifar_resnet56")`` works."""
from .cifar_resnet import CifarResNet, cifar_resnet20, cifar_resnet32, cifar_resnet56, cifar_resnet110
from .cifar_vgg import CifarVGG, cifar_vgg19_bn

__all__ = [
    "CifarResNet",
    "CifarVGG",
    "cifar_resnet20",
    "cifar_resnet32",
    "cifar_resnet56",
    "cifar_resnet110",
    "cifar_vgg19_bn",
]
