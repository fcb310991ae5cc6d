"""Meta-train a graph metanetwork on a data-model zoo: ``hf-metaprune meta-train`` as a script, for
``accelerate launch`` (both call ``hf_metaprune.meta_train``, the one meta-training path).

    python examples/train_metanetwork.py --zoo outputs/zoo-resnet20 --dataset ../shared/data/cifar10 \\
        --output_dir outputs/metapruner-resnet20 --max_steps 500 --eval_strategy steps --eval_steps 100 \\
        --save_strategy steps --save_steps 100 --load_best_model_at_end
    accelerate launch examples/train_metanetwork.py --zoo outputs/zoo-resnet20 \\
        --output_dir outputs/metapruner-resnet20 --max_steps 500          # data models split over processes
    python examples/train_metanetwork.py ... --resume_from_checkpoint last   # continue from the newest checkpoint

The last ``--num_eval_models`` data models are held out for prune-and-probe evaluation. Pass the same
``--dataset``, ``--max_train_samples`` and ``--val_size`` as when the zoo was trained: the validation split (probe
scores) is then one the data models never trained on. Every ``MetaPrunerTrainingArguments`` / ``TrainingArguments``
flag is accepted (``--help`` lists them; ``--disable_tqdm true`` takes a value); ``--per_device_train_batch_size``
counts data models. The trained metanetwork (model.safetensors, config.json and a README.md model card, no pickle) is
saved to ``<output_dir>/final``; load it with ``hm.MetaPrunerModel.from_pretrained("<output_dir>/final")``.

Several CPU processes (no GPU): ``accelerate launch --multi_gpu --num_processes 2 ...`` (gloo DDP on the CPU);
``accelerate launch --cpu --num_processes 2`` starts only one process unless an MPI hostfile is configured.
"""
import sys

from hf_metaprune.cli import main

if __name__ == "__main__":
    sys.exit(main(["meta-train", *sys.argv[1:]]))
