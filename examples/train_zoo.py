"""Train a data-model zoo: ``hf-metaprune zoo`` as a script, for ``accelerate launch`` (both call
``hf_metaprune.train_zoo``).

    python examples/train_zoo.py cifar_resnet20 --dataset ../shared/data/cifar10 --output_dir outputs/zoo-resnet20 \\
        --num_models 8 --epochs 30
    python examples/train_zoo.py cifar_resnet20 ... --prune_speed_up 1.3 --finetune_epochs 5   # varied widths
    accelerate launch examples/train_zoo.py cifar_resnet20 ...                    # each model trained data-parallel

The zoo is written to ``<output_dir>/zoo`` (a 🤗 ``datasets`` folder, safetensors weights, no pickle) after every
model, so rerunning the same command after an interruption continues with the next missing seed. ``--dataset`` is a
local folder of parquet files or a Hub dataset id; ``--help`` lists every flag.
"""
import sys

from hf_metaprune.cli import main

if __name__ == "__main__":
    sys.exit(main(["zoo", *sys.argv[1:]]))
