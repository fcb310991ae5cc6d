from setuptools import find_packages, setup

setup(
    name="hf_metaprune",
    version="0.1.0",
    description="Meta-learned structured pruning with graph metanetworks, Hugging Face native",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["hf_metaprune", "hf_metaprune.*"]),
    package_data={"hf_metaprune": ["model_cards/*.md"]},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.3",
        "torchvision",
        "timm>=1.0",
        "transformers>=5.0",
        "accelerate>=1.0",
        "datasets>=3.0",
        "huggingface-hub>=1.0",
        "torch-geometric>=2.5",
        "evaluate>=0.4",
        "torch-pruning>=1.5",
        "safetensors>=0.4",
        "jinja2",  # model cards
    ],
    extras_require={
        "bench": ["matplotlib"],  # benchmarks/cifar.py plots
        "dev": ["pytest>=8", "matplotlib"],
    },
)
