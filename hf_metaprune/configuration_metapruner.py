"""Configuration of the graph metanetwork."""
from __future__ import annotations

from transformers import PretrainedConfig

from .graph.kinds import DEFAULT_EDGE_KINDS, NODE_KINDS


class MetaPrunerConfig(PretrainedConfig):
    """Size and behaviour of a :class:`MetaPrunerModel`.

    Args:
        hidden_size: width of node and edge states.
        num_layers: message-passing layers (each updates nodes, then edges).
        aggregations: how messages are pooled at a node, in both edge directions.
        residual_scale: ε in ``W' = W + ε·rms(W)·Δ``: the step size of the metanetwork's edits, relative to
            the RMS of each weight kind.
        init_identity: start the decoders at zero, so an untrained metanetwork is exactly the identity and
            meta-training starts from the data models' accuracy whatever ε is.
        edge_kinds: weight kinds the metanetwork has an encoder/decoder for (kernel shapes, e.g. "3x3";
            "flatK" for a linear layer reading K spatial positions per channel). Keep this to the kinds the
            target family uses, so that no parameter is left unused during distributed training.
        node_kinds: per-channel record kinds (see ``hf_metaprune.graph.NODE_KINDS``).
        edge_chunk_size: edges processed at once by the edge MLPs (speed and memory only; results identical).
        criterion: the pruning criterion the metanetwork was trained for.
        base_architecture / dataset / target_speed_ups / num_data_models / validation_scores: what it was
            trained for and on, and its prune-and-probe scores; written to the model card.
    """

    model_type = "metapruner"

    def __init__(
        self,
        hidden_size: int = 64,
        num_layers: int = 8,
        aggregations: tuple[str, ...] | list[str] = ("mean", "max", "min", "std"),
        residual_scale: float = 0.01,
        init_identity: bool = True,
        edge_kinds: tuple[str, ...] | list[str] = DEFAULT_EDGE_KINDS,
        node_kinds: tuple[str, ...] | list[str] = tuple(NODE_KINDS),
        edge_chunk_size: int = 32768,
        criterion: str = "group_l2",
        base_architecture: str | None = None,
        dataset: str | None = None,
        target_speed_ups: list[float] | None = None,
        num_data_models: int | None = None,
        validation_scores: dict[str, float] | None = None,
        **kwargs,
    ):
        unknown = set(node_kinds) - set(NODE_KINDS)
        if unknown:
            raise ValueError(f"unknown node kinds {sorted(unknown)}; known: {sorted(NODE_KINDS)}")
        if hidden_size < 1 or num_layers < 0:
            raise ValueError("hidden_size must be >= 1 and num_layers >= 0")
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.aggregations = list(aggregations)
        self.residual_scale = residual_scale
        self.init_identity = init_identity
        self.edge_kinds = list(edge_kinds)
        self.node_kinds = list(node_kinds)
        self.edge_chunk_size = edge_chunk_size
        self.criterion = criterion
        self.base_architecture = base_architecture
        self.dataset = dataset
        self.target_speed_ups = list(target_speed_ups) if target_speed_ups else None
        self.num_data_models = num_data_models
        self.validation_scores = validation_scores
        super().__init__(**kwargs)

    @classmethod
    def for_graphs(cls, graphs, **kwargs) -> "MetaPrunerConfig":
        """A config whose edge/node kinds are exactly those used by ``graphs`` (no dead parameters)."""
        edge_kinds = sorted({k for g in graphs for k in g.edges})
        node_kinds = sorted({k for g in graphs for k in g.records})
        return cls(edge_kinds=edge_kinds, node_kinds=node_kinds, **kwargs)
