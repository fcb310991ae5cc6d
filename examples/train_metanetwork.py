"""Meta-train a graph metanetwork on a data-model zoo (examples/train_zoo.py) with the MetaPrunerTrainer.

    python examples/train_metanetwork.py --zoo outputs/zoo-resnet20 --output_dir outputs/metapruner-resnet20 \\
        --max_steps 500 --eval_strategy steps --eval_steps 100 --save_strategy steps --save_steps 100 \\
        --load_best_model_at_end
    accelerate launch examples/train_metanetwork.py --zoo outputs/zoo-resnet20 \\
        --output_dir outputs/metapruner-resnet20 --max_steps 500          # data models split over processes
    python examples/train_metanetwork.py ... --resume_from_checkpoint last   # or a checkpoint folder

The last ``--num_eval_models`` data models are held out for prune-and-probe evaluation. Pass the same
``--dataset``, ``--max_train_samples`` and ``--val_size`` as to train_zoo.py: the validation split (probe scores)
is then one the data models never trained on. Every ``MetaPrunerTrainingArguments`` / ``TrainingArguments`` flag
is accepted (``--help`` lists them; ``--disable_tqdm true`` takes a value); ``--per_device_train_batch_size``
counts data models. The trained metanetwork (model.safetensors, config.json and a README.md model card) is saved
to ``<output_dir>/final``; load it with ``hm.MetaPrunerModel.from_pretrained("<output_dir>/final")``.

Several CPU processes (no GPU): ``accelerate launch --multi_gpu --num_processes 2 ...`` (gloo DDP on the CPU);
``accelerate launch --cpu --num_processes 2`` starts only one process unless an MPI hostfile is configured.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from transformers import HfArgumentParser, set_seed
from transformers.trainer_utils import get_last_checkpoint

import hf_metaprune as hm

# Meta-training defaults (overridable on the command line). Plain TrainingArguments defaults such as
# adamw_torch_fused, a linear schedule or weight decay do not suit the metanetwork. dataloader_drop_last: under
# several processes Accelerate pads an incomplete last batch of data models with repeats, so a run would depend
# on the process count; dropping it keeps 1 x 2 and 2 x 1 data models per step identical.
META_TRAINING_DEFAULTS = dict(
    learning_rate=1e-3, sparsity_lambda=3e-3, warmup_steps=10, optim="adamw_torch", weight_decay=0.0,
    lr_scheduler_type="constant_with_warmup", task_batch_size=64, task_batches_per_step=2, per_device_train_batch_size=1,
    logging_steps=10, save_strategy="steps", save_steps=100, save_total_limit=2, report_to="none",
    use_cpu=not torch.cuda.is_available(), dataloader_drop_last=True)


@dataclass
class ScriptArguments:
    zoo: str = field(metadata={"help": "output_dir of examples/train_zoo.py (or its zoo folder, or a Hub id)"})
    dataset: str = field(default="../shared/data/cifar10",
                         metadata={"help": "task data: local folder of parquet files or a Hub dataset id"})
    num_eval_models: int = field(default=1, metadata={"help": "last data models held out for prune-and-probe"})
    max_train_samples: int | None = field(default=None, metadata={"help": "use the first N training rows"})
    val_size: int = field(default=5000, metadata={"help": "validation images carved from the training split"})


@dataclass
class MetaNetworkArguments:
    hidden_size: int = field(default=64, metadata={"help": "width of node and edge states"})
    num_layers: int = field(default=8, metadata={"help": "message-passing layers"})
    residual_scale: float = field(default=0.1, metadata={"help": "ε: step size of the metanetwork's edits"})


def parse_args(argv: list[str] | None = None):
    parser = HfArgumentParser((ScriptArguments, MetaNetworkArguments, hm.MetaPrunerTrainingArguments))
    parser.set_defaults(**META_TRAINING_DEFAULTS)
    script, net, training = parser.parse_args_into_dataclasses(argv)
    if training.output_dir is None:
        parser.error("--output_dir is required")
    return script, net, training


def resolve_checkpoint(value: str | None, output_dir: str) -> str | bool | None:
    """``last`` / ``true``: the newest checkpoint in ``output_dir`` (none there: start fresh)."""
    if value is None or value.lower() in ("", "none", "false"):
        return None
    if value.lower() in ("last", "latest", "true", "auto"):
        return get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
    return value


def main(argv: list[str] | None = None) -> str:
    script, net, training = parse_args(argv)
    zoo = hm.DataModelZoo.load(script.zoo)
    architecture = zoo.require_architecture()
    if script.num_eval_models > 0:
        train_zoo, eval_zoo = zoo.split(script.num_eval_models)
    else:
        train_zoo, eval_zoo = zoo, None
    data = hm.load_image_classification(script.dataset, val_size=script.val_size,
                                        max_train_samples=script.max_train_samples, max_test_samples=1)

    set_seed(training.seed)  # the metanetwork's initialisation
    graph = hm.model_to_graph(zoo.model(0), data.example_inputs())
    config = hm.MetaPrunerConfig.for_graphs([graph], hidden_size=net.hidden_size, num_layers=net.num_layers,
                                            residual_scale=net.residual_scale, dataset=script.dataset)
    model = hm.MetaPrunerModel(config)
    trainer = hm.MetaPrunerTrainer(model, training, train_zoo, data, eval_zoo=eval_zoo)
    if trainer.is_world_process_zero():
        print(f"[metanetwork] {architecture}: {len(train_zoo)} training / "
              f"{len(eval_zoo) if eval_zoo is not None else 0} held-out data models, "
              f"{sum(p.numel() for p in model.parameters()) / 1e3:.1f}k parameters, "
              f"{trainer.accelerator.num_processes} process(es)", flush=True)

    result = trainer.train(resume_from_checkpoint=resolve_checkpoint(training.resume_from_checkpoint,
                                                                     training.output_dir))
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    evaluated = [h["step"] for h in trainer.state.log_history if "eval_probe_accuracy" in h]
    if (eval_zoo is not None and training.eval_strategy != "no" and not training.load_best_model_at_end
            and (not evaluated or evaluated[-1] != trainer.state.global_step)):
        metrics = trainer.evaluate()  # scores of the final weights, for the model card
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    final = os.path.join(training.output_dir, "final")
    trainer.save_model(final)  # model.safetensors + config.json + README.md model card (main process)
    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        # the Trainer also pickles its TrainingArguments there; the metanetwork folder stays pickle-free
        if os.path.isfile(os.path.join(final, "training_args.bin")):
            os.remove(os.path.join(final, "training_args.bin"))
        print(f"[metanetwork] saved to {final}", flush=True)
    return final


if __name__ == "__main__":
    main()
