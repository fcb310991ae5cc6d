import glob
import os

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py


class BuildWithModelCards(build_py):
    """Copy the top-level model_cards/ templates into the built package (hf_metaprune/model_cards/), where an
    installed (non-editable) hf_metaprune finds them; a source checkout reads them in place."""

    def run(self):
        super().run()
        target = os.path.join(self.build_lib, "hf_metaprune", "model_cards")
        self.mkpath(target)
        for path in sorted(glob.glob("model_cards/*.md")):
            self.copy_file(path, target)


setup(
    name="hf_metaprune",
    version="0.1.0",
    description="Meta-learned structured pruning with graph metanetworks, Hugging Face native",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["hf_metaprune", "hf_metaprune.*"]),
    package_data={"hf_metaprune": ["methods/*/pretrained/*/*"]},  # shipped checkpoints (safetensors, config, card)
    cmdclass={"build_py": BuildWithModelCards},
    entry_points={"console_scripts": ["hf-metaprune=hf_metaprune.cli:main"]},
    python_requires=">=3.10",
    # Lowest versions checked by the test suite (torch 2.14.1 / torchvision 0.29.1); no upper pins.
    install_requires=[
        "torch>=2.3",  # not checked below 2.14.1 here
        "torchvision",
        "timm>=1.0.23",
        "transformers>=5.0",
        "accelerate>=1.3",  # transformers 5's Trainer passes keep_torch_compile
        "datasets>=4.0",  # pixel-array image columns need datasets>=5.0 beside torchvision>=0.29
        "huggingface-hub>=1.3",
        "torch-geometric>=2.5",
        "torch-pruning>=1.5.3",  # 1.5.2 cannot group ConvNeXt, 1.5.1 lacks GroupMagnitudeImportance
        "safetensors>=0.4.3",
        "jinja2",  # model cards
    ],
    extras_require={
        "bench": ["matplotlib"],  # benchmarks/cifar.py plots
        "metrics": ["evaluate"],  # hf-metaprune evaluate --metrics f1 ... (accuracy needs nothing)
        "dev": ["pytest>=8", "matplotlib"],
    },
)
