"""GraphPruning end to end (Zhang et al., "Graph Pruning for Model Compression"): a PruningNet whose generators read
the embeddings of a GCN over the layer graph, trained by stochastic structure sampling, a DDPG search (AMC's
protocol, reward = validation accuracy of generated weights after BatchNorm recalibration) under a MACs budget, then
finetuning, against a uniform width multiplier at the same MACs and budget. It is examples/metapruning.py with
``--method graphpruning``; every flag of that script applies.

    python examples/graphpruning.py --output_dir outputs/graphpruning --speed_up 2
    accelerate launch examples/graphpruning.py --output_dir outputs/graphpruning
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from metapruning import main  # noqa: E402

if __name__ == "__main__":
    main(["--method", "graphpruning", *sys.argv[1:]])
