"""The library versions a number depends on, recorded in every results JSON so it can be traced to its setup."""
from __future__ import annotations

import platform
from importlib import metadata

PACKAGES = ("torch", "torchvision", "transformers", "timm", "torch-pruning", "torch-geometric", "accelerate",
            "datasets", "huggingface-hub", "safetensors", "hf_metaprune")


def library_versions() -> dict[str, str]:
    """``{"python": "3.11.7", "torch": "2.14.1", ...}``; a package that is not installed is "not installed"."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
