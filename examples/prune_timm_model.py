"""Prune a timm CNN to a MACs speed-up, with or without a trained metanetwork, and save it without pickle.

    python examples/prune_timm_model.py --model cifar_resnet56 --speed-up 2.3
    python examples/prune_timm_model.py --model resnet18 --resolution 224 --metapruner path/or/hub-id

The model here is randomly initialised (pretrained=False) unless --checkpoint points at a safetensors file;
finetuning the pruned model is covered by examples/prune_and_finetune.py.
"""
import argparse

import timm
import torch
from safetensors.torch import load_file

import hf_metaprune as hm


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="cifar_resnet56")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--checkpoint", help="safetensors state dict of the trained model")
    p.add_argument("--metapruner", help="folder or Hub id of a trained MetaPrunerModel (omit: plain group-L2)")
    p.add_argument("--speed-up", type=float, default=2.0)
    p.add_argument("--output-dir", default="outputs/pruned")
    args = p.parse_args()

    model = timm.create_model(args.model, pretrained=False, num_classes=args.num_classes).eval()
    if args.checkpoint:
        model.load_state_dict(load_file(args.checkpoint))
    x = torch.randn(1, 3, args.resolution, args.resolution)
    if args.metapruner:
        result = hm.MetaPrunerModel.from_pretrained(args.metapruner).eval().prune(model, x, args.speed_up)
    else:
        result = hm.prune_to_speedup(model, x, args.speed_up)
    print(result)
    hm.save_pruned(result.model, args.output_dir)
    reloaded = hm.load_pruned(args.output_dir)
    assert torch.equal(reloaded(x), result.model.eval()(x))
    print(f"saved to {args.output_dir} (model.safetensors + pruned_config.json) and reloaded identically")


if __name__ == "__main__":
    main()
