"""Prune a 🤗 BERT for text classification (TREC) with a meta-trained graph metanetwork (heads and MLP neurons).

    python examples/prune_bert.py --dataset ../shared/data/trec --output_dir outputs/prune-bert
    python examples/prune_bert.py --dataset CogComp/trec --tokenizer bert-base-uncased ...     # online
    accelerate launch examples/prune_bert.py ...          # zoo, meta-training and finetuning data-parallel
    # two CPU processes: accelerate launch --multi_gpu --num_processes 2 examples/prune_bert.py ...

The BERT is built from a config (no download). Without ``--tokenizer`` a WordPiece vocabulary is built from the
training split (offline). Every flag of hf_metaprune.training.transformers_pipeline.PipelineArguments is accepted
(``--help``). Writes ``<output_dir>/results.json`` and the pruned model + tokenizer to ``<output_dir>/pruned``
(reload with ``AutoModelForSequenceClassification.from_pretrained`` after ``import hf_metaprune``).
"""
import sys

from transformers import AutoModelForSequenceClassification, BertConfig

import hf_metaprune as hm
from hf_metaprune.training.transformers_pipeline import parse, run


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    tokenizer = None
    if "--tokenizer" in argv:  # not a pipeline flag: take it out before parsing
        i = argv.index("--tokenizer")
        tokenizer = argv[i + 1]
        del argv[i:i + 2]
    args = parse({"dataset": "../shared/data/trec", "output_dir": "outputs/prune-bert", "zoo_epochs": 4.0,
                  "finetune_epochs": 3.0, "learning_rate": 2e-3}, argv)
    data = hm.load_text_classification(args.dataset, tokenizer=tokenizer, val_size=args.val_size, seed=args.seed,
                                       max_train_samples=args.max_train_samples or None,
                                       max_test_samples=args.max_test_samples or None)
    config = BertConfig(vocab_size=len(data.tokenizer), hidden_size=args.hidden_size,
                        num_hidden_layers=args.num_hidden_layers, num_attention_heads=args.num_attention_heads,
                        intermediate_size=args.intermediate_size, max_position_embeddings=128,
                        pad_token_id=data.tokenizer.pad_token_id)
    return run(args, data, config, AutoModelForSequenceClassification, "bert")


if __name__ == "__main__":
    main()
