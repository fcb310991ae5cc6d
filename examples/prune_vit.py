"""Prune a 🤗 ViT on CIFAR-10 with a meta-trained graph metanetwork (whole heads and MLP neurons).

    python examples/prune_vit.py --dataset ../shared/data/cifar10 --output_dir outputs/prune-vit
    accelerate launch examples/prune_vit.py ...          # zoo, meta-training and finetuning data-parallel
    # two CPU processes: accelerate launch --multi_gpu --num_processes 2 examples/prune_vit.py ...

The ViT is built from a config (32x32 images, 4x4 patches; no download). Every flag of
hf_metaprune.training.transformers_pipeline.PipelineArguments is accepted (``--help``). Writes
``<output_dir>/results.json`` and the pruned model to ``<output_dir>/pruned`` (reload it with
``AutoModelForImageClassification.from_pretrained`` after ``import hf_metaprune``).
"""
from transformers import AutoModelForImageClassification, ViTConfig

import hf_metaprune as hm
from hf_metaprune.training.transformers_pipeline import parse, run


def main(argv=None):
    args = parse({"dataset": "../shared/data/cifar10", "output_dir": "outputs/prune-vit",
                  "max_train_samples": 10000, "val_size": 1000}, argv)
    data = hm.load_image_classification(args.dataset, val_size=args.val_size, seed=args.seed,
                                        max_train_samples=args.max_train_samples or None,
                                        max_test_samples=args.max_test_samples or None)
    config = ViTConfig(image_size=data.image_size, patch_size=4, num_channels=data.train.images.shape[1],
                       hidden_size=args.hidden_size, num_hidden_layers=args.num_hidden_layers,
                       num_attention_heads=args.num_attention_heads, intermediate_size=args.intermediate_size)
    return run(args, data, config, AutoModelForImageClassification, "vit")


if __name__ == "__main__":
    main()
