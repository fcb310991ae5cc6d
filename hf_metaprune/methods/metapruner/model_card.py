"""The metanetwork's model card, rendered from ``model_cards/metapruner.md`` with ``huggingface_hub.ModelCard``
(saving adds the marker that tells an unedited card from a user's README: :mod:`hf_metaprune.methods.base`)."""
from __future__ import annotations

from huggingface_hub import ModelCard, ModelCardData

from ..base import model_card_template
from .configuration import MetaPrunerConfig


def metapruner_model_card(config: MetaPrunerConfig, model_id: str | None = None) -> ModelCard:
    """The README.md of a metanetwork: Hub metadata (library, tags, dataset) plus what it was trained for."""
    if not isinstance(config, MetaPrunerConfig):
        raise TypeError(f"metapruner_model_card: config must be a MetaPrunerConfig, got {type(config).__name__}")
    if model_id is not None and not isinstance(model_id, str):
        raise TypeError(f"metapruner_model_card: model_id must be a str (a Hub repo id) or None, got "
                        f"{type(model_id).__name__}")
    tags = ["pruning", "structured-pruning", "graph-neural-network", "meta-learning", "hf_metaprune"]
    if config.base_architecture:
        tags.append(config.base_architecture)
    card_data = ModelCardData(
        library_name="hf_metaprune", tags=tags, datasets=[config.dataset] if config.dataset else None,
        base_architecture=config.base_architecture, criterion=config.criterion,
        target_speed_ups=config.target_speed_ups, num_data_models=config.num_data_models,
        validation_scores=config.validation_scores)
    return ModelCard.from_template(
        card_data, template_path=model_card_template("metapruner"), model_id=model_id, base_architecture=config.base_architecture,
        dataset=config.dataset, criterion=config.criterion, target_speed_ups=config.target_speed_ups,
        num_data_models=config.num_data_models, validation_scores=config.validation_scores,
        num_layers=config.num_layers, hidden_size=config.hidden_size, residual_scale=config.residual_scale,
        training_command=config.training_command)
