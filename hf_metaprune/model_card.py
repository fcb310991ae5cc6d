"""Model cards for metanetworks, rendered from ``model_cards/metapruner.md`` with ``huggingface_hub.ModelCard``."""
from __future__ import annotations

from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from .configuration_metapruner import MetaPrunerConfig

TEMPLATE = Path(__file__).parent / "model_cards" / "metapruner.md"


def metapruner_model_card(config: MetaPrunerConfig, model_id: str | None = None) -> ModelCard:
    """The README.md of a metanetwork: Hub metadata (library, tags, dataset) plus what it was trained for."""
    tags = ["pruning", "structured-pruning", "graph-neural-network", "meta-learning", "hf_metaprune"]
    if config.base_architecture:
        tags.append(config.base_architecture)
    card_data = ModelCardData(
        library_name="hf_metaprune", tags=tags, datasets=[config.dataset] if config.dataset else None,
        base_architecture=config.base_architecture, criterion=config.criterion,
        target_speed_ups=config.target_speed_ups, num_data_models=config.num_data_models,
        validation_scores=config.validation_scores)
    return ModelCard.from_template(
        card_data, template_path=str(TEMPLATE), model_id=model_id, base_architecture=config.base_architecture,
        dataset=config.dataset, criterion=config.criterion, target_speed_ups=config.target_speed_ups,
        num_data_models=config.num_data_models, validation_scores=config.validation_scores,
        num_layers=config.num_layers, hidden_size=config.hidden_size, residual_scale=config.residual_scale)
