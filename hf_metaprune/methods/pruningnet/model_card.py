"""The PruningNet's model card (``model_cards/pruningnet.md``, rendered with ``huggingface_hub.ModelCard``)."""
from __future__ import annotations

from huggingface_hub import ModelCard, ModelCardData

from ..base import model_card_template


def pruningnet_model_card(config, model_id: str | None = None, method: str = "pruningnet", tags: tuple[str, ...] = (),
                          **fields) -> ModelCard:
    """README.md of a PruningNet (or of a method built on it: ``method`` names its template, ``tags`` and ``fields``
    add to the Hub metadata and the template's values): the structures it generates and its search scores."""
    tags = ["pruning", "structured-pruning", "meta-learning", *tags, "hf_metaprune"]
    if config.base_architecture:
        tags.append(config.base_architecture)
    card_data = ModelCardData(library_name="hf_metaprune", tags=tags,
                              datasets=[config.dataset] if config.dataset else None,
                              base_architecture=config.base_architecture, validation_scores=config.validation_scores)
    return ModelCard.from_template(
        card_data, template_path=model_card_template(method), model_id=model_id,
        base_architecture=config.base_architecture, dataset=config.dataset, hidden_size=config.hidden_size,
        num_ratios=len(config.width_ratios), min_ratio=config.width_ratios[0], label_smoothing=config.label_smoothing,
        validation_scores=config.validation_scores, **fields)
