"""Train a data-model zoo: independently seeded networks of one family, the training examples of meta-training.

    python examples/train_zoo.py --output_dir outputs/zoo-resnet20 --num_models 8 --epochs 30
    python examples/train_zoo.py --output_dir outputs/zoo-resnet20 --num_models 8 --epochs 30 \\
        --prune_speed_up 1.3 --finetune_epochs 5          # published recipe: varied widths across the zoo
    accelerate launch examples/train_zoo.py --output_dir outputs/zoo-resnet20 --num_models 8 --epochs 30

The zoo is written to ``<output_dir>/zoo`` (a 🤗 ``datasets`` folder, safetensors weights, no pickle) after every
model, so rerunning the same command after an interruption continues with the next missing seed.
``--dataset`` is a local folder of parquet files (default: the offline CIFAR-10 copy) or a Hub dataset id.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from accelerate import PartialState
from transformers import HfArgumentParser

import hf_metaprune as hm


@dataclass
class ZooArguments:
    output_dir: str = field(metadata={"help": "the zoo goes to <output_dir>/zoo"})
    architecture: str = field(default="cifar_resnet20", metadata={"help": "timm model name"})
    dataset: str = field(default="../shared/data/cifar10",
                         metadata={"help": "local folder of parquet files or a Hub dataset id"})
    num_models: int = field(default=8, metadata={"help": "data models (seeds seed .. seed+num_models-1)"})
    epochs: float = field(default=30.0, metadata={"help": "training epochs per data model"})
    prune_speed_up: float | None = field(
        default=None, metadata={"help": "lightly prune every model to this MACs speed-up (e.g. 1.3) for varied widths"})
    finetune_epochs: float = field(default=0.0, metadata={"help": "finetuning epochs after --prune_speed_up"})
    seed: int = field(default=0, metadata={"help": "seed of the first data model"})


@dataclass
class ZooTrainingArguments:
    max_train_samples: int | None = field(default=None, metadata={"help": "use the first N training rows"})
    val_size: int = field(default=5000, metadata={"help": "validation images carved from the training split"})
    batch_size: int = field(default=128, metadata={"help": "per-device training batch size"})
    learning_rate: float = field(default=0.1, metadata={"help": "peak SGD learning rate (cosine schedule)"})
    weight_decay: float = field(default=5e-4)
    logging_steps: int = field(default=50)
    disable_tqdm: bool = field(default=False, metadata={"help": "no progress bars (for log files)"})


def main(argv: list[str] | None = None) -> hm.DataModelZoo:
    zoo_args, data_args = HfArgumentParser((ZooArguments, ZooTrainingArguments)).parse_args_into_dataclasses(argv)
    data = hm.load_image_classification(zoo_args.dataset, val_size=data_args.val_size, seed=0,
                                        max_train_samples=data_args.max_train_samples,
                                        max_test_samples=1)  # the test split is not used here
    main_process = PartialState(cpu=not torch.cuda.is_available()).is_main_process
    if main_process:
        print(f"[zoo] {zoo_args.dataset}: {len(data.train)} train / {len(data.validation)} validation images, "
              f"{data.num_classes} classes", flush=True)
    start = time.time()
    zoo = hm.train_zoo(
        zoo_args.architecture, data, zoo_args.output_dir, num_models=zoo_args.num_models, epochs=zoo_args.epochs,
        seed=zoo_args.seed, prune_speed_up=zoo_args.prune_speed_up, finetune_epochs=zoo_args.finetune_epochs,
        batch_size=data_args.batch_size, learning_rate=data_args.learning_rate,
        weight_decay=data_args.weight_decay, logging_steps=data_args.logging_steps,
        disable_tqdm=data_args.disable_tqdm, report_to="none", use_cpu=not torch.cuda.is_available())
    accs = zoo.dataset["val_accuracy"]
    if main_process:
        print(f"[zoo] {len(zoo)} data models in {zoo_args.output_dir}/zoo; validation accuracy "
              f"{min(accs):.4f}..{max(accs):.4f} (mean {sum(accs) / len(accs):.4f}); {time.time() - start:.0f}s",
              flush=True)
    return zoo


if __name__ == "__main__":
    main()
