"""GraphPruning's model card (``model_cards/graphpruning.md``, rendered with ``huggingface_hub.ModelCard``)."""
from __future__ import annotations

from huggingface_hub import ModelCard, ModelCardData

from ..base import model_card_template


def graphpruning_model_card(config, model_id: str | None = None) -> ModelCard:
    """README.md of a GraphPruning model: Hub metadata, the aggregator and generators, its search scores."""
    tags = ["pruning", "structured-pruning", "meta-learning", "graphpruning", "gcn", "hf_metaprune"]
    if config.base_architecture:
        tags.append(config.base_architecture)
    card_data = ModelCardData(library_name="hf_metaprune", tags=tags,
                              datasets=[config.dataset] if config.dataset else None,
                              base_architecture=config.base_architecture, validation_scores=config.validation_scores)
    return ModelCard.from_template(
        card_data, template_path=model_card_template("graphpruning"), model_id=model_id,
        base_architecture=config.base_architecture, dataset=config.dataset, hidden_size=config.hidden_size,
        gcn_hidden_size=config.gcn_hidden_size, gcn_layers=config.gcn_layers, num_ratios=len(config.width_ratios),
        min_ratio=config.width_ratios[0], label_smoothing=config.label_smoothing,
        validation_scores=config.validation_scores)
