"""GraphPruning's model: the PruningNet with a GCN aggregator in front of its generators.

The network is viewed as a graph whose nodes are the prunable coupled groups (a gene's entries: residual-tied
channels are one node) and whose edges are the data flow between them — every conv / linear layer links the group of
its input channels to the group of its output channels, so shortcut projections are edges too. Both come from the
Torch-Pruning dependency graph behind :class:`~hf_metaprune.ChannelGroups`, not from per-architecture code. Each node
carries AMC-style descriptors (position, width, MACs and parameter share, how many layers touch it) plus the width
ratio the gene gives it; a GCN (PyTorch Geometric) mixes neighbouring nodes, and every layer's generator reads the
embeddings of its output and input groups instead of MetaPruning's two local ratios — so the weights a layer gets
depend on how its neighbours are pruned.
"""
from __future__ import annotations

import torch
from torch import nn
from torch_geometric.nn import GCNConv

from ..pruningnet.model_card import pruningnet_model_card
from ..pruningnet.modeling import PruningNetModel
from .configuration import GraphPruningConfig

NODE_FEATURES = 6  # position, log width, MACs share, parameter share, layers touching it, width ratio


class GCNAggregator(nn.Module):
    """``gcn_layers`` graph convolutions (symmetric normalisation, self-loops) with ReLU: node features ->
    embeddings. Permuting the nodes (and the edges with them) permutes the output: nothing depends on node order."""

    def __init__(self, in_features: int, hidden: int, layers: int):
        super().__init__()
        sizes = [in_features] + [hidden] * layers
        self.convs = nn.ModuleList(GCNConv(a, b) for a, b in zip(sizes, sizes[1:]))

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = torch.relu(conv(x, edge_index))
        return x


class GraphPruningModel(PruningNetModel):
    """A PruningNet (weights for any gene, :meth:`search` for the best structure) whose generator contexts are GCN
    embeddings of the layer graph; searched by reinforcement learning (DDPG, :func:`ddpg_search`) or, for the
    ablation, by MetaPruning's evolutionary search on the same generators (:meth:`evolutionary_search`)."""

    config_class = GraphPruningConfig
    base_model_prefix = "graphpruning"
    checkpoint_noun = "GraphPruning model"

    def __init__(self, config: GraphPruningConfig):
        super().__init__(config)
        self.aggregator = GCNAggregator(NODE_FEATURES, config.gcn_hidden_size, config.gcn_layers)
        # the embedding of a side no group prunes (the image channels, the classes): learned like the rest
        self.outside = nn.Parameter(torch.zeros(config.gcn_hidden_size))
        self._graph: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def context_size(self) -> int:
        return 2 * self.config.gcn_hidden_size

    def model_card(self, repo_id: str | None = None):
        return pruningnet_model_card(self.config, repo_id, method="graphpruning", tags=("graphpruning", "gcn"),
                                     gcn_hidden_size=self.config.gcn_hidden_size, gcn_layers=self.config.gcn_layers)

    # ---- the layer graph ---------------------------------------------------------------------------------------
    @property
    def edge_index(self) -> torch.Tensor:
        """``[2, E]`` directed data-flow edges between coupled groups (input group -> output group of a layer), both
        directions listed (the GCN is undirected), deduplicated."""
        return self._layer_graph()[0]

    @property
    def static_features(self) -> torch.Tensor:
        """``[groups, 5]`` node descriptors that do not depend on the gene (min-max normalised where AMC does)."""
        return self._layer_graph()[1]

    def _layer_graph(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._graph is None:
            groups, layer_groups = self.groups, self.layer_groups
            n = groups.num_groups
            pairs = {(int(i), int(o)) for o, i in layer_groups.tolist() if o < n and i < n and o != i}
            edges = sorted(pairs | {(o, i) for i, o in pairs})
            edge_index = torch.tensor(edges, dtype=torch.long).t() if edges else torch.zeros(2, 0, dtype=torch.long)
            sizes = torch.tensor(groups.group_sizes, dtype=torch.float)
            macs = torch.zeros(n)
            params = torch.zeros(n)
            touching = torch.zeros(n)
            shapes = dict(self.network.named_parameters())
            for (o, i), name in zip(layer_groups.tolist(), self.generated):
                for g in {o, i} - {n}:
                    params[g] += shapes[name].numel()
                    touching[g] += 1
            for layer in groups.layers:
                for units in (layer.out_units, layer.in_units):
                    if units is not None:
                        inside = units[units < groups.num_units]
                        for g in groups.group_of_unit[inside].unique().tolist():
                            macs[g] += layer.macs
            position = torch.arange(n, dtype=torch.float) / max(n - 1, 1)
            features = torch.stack([position, torch.log2(sizes) / torch.log2(sizes.max()).clamp_min(1),
                                    macs / macs.max().clamp_min(1), params / params.max().clamp_min(1),
                                    touching / touching.max().clamp_min(1)], dim=1)
            self._graph = (edge_index, features)
        return self._graph

    def node_embeddings(self, gene: list[int]) -> torch.Tensor:
        """``[groups, gcn_hidden_size]``: the aggregator's embedding of every coupled group for ``gene``."""
        gene = self.check_gene(gene)
        edge_index, static = (t.to(self.device) for t in self._layer_graph())
        ratios = torch.tensor([self.config.width_ratios[i] for i in gene], device=self.device)
        return self.aggregator(torch.cat([static, ratios[:, None]], dim=1), edge_index)

    def layer_contexts(self, gene: list[int]) -> torch.Tensor:
        """``[generated layers, 2·gcn_hidden_size]``: the embeddings of each layer's output and input groups."""
        nodes = torch.cat([self.node_embeddings(gene), self.outside[None]], dim=0)
        return nodes[self.layer_groups.to(self.device)].flatten(1)

    def search(self, data, speed_up: float, **kwargs):
        """GraphPruning's reinforcement-learning search (:func:`ddpg_search`); the inherited
        :meth:`evolutionary_search` runs MetaPruning's on the same generators (the RL-vs-evolution ablation)."""
        from .search import ddpg_search

        return ddpg_search(self, data, speed_up, **kwargs)
