"""Configuration of MetaPruning's PruningNet (Liu et al., ICCV 2019)."""
from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

from ...pruning.groups import check_round_to
from ..base import check_base_fields

# MetaPruning's grid: scale[i] = (10 + 3i) / 100, i = 0..30 -> 0.10, 0.13, ..., 1.00
PUBLISHED_WIDTH_RATIOS = [round((10 + 3 * i) / 100, 2) for i in range(31)]


class PruningNetConfig(PretrainedConfig):
    """What a PruningNet generates weights for and how.

    Args:
        base_architecture: the timm name of the network whose pruned versions it generates (e.g. ``cifar_resnet20``).
        base_model_kwargs: keyword arguments of ``timm.create_model`` (e.g. ``{"num_classes": 10}``).
        input_shape: one example input's shape without the batch dimension (tracing the coupled groups).
        hidden_size: width of every generator ``FC(context → H) → ReLU → FC(H → weight)`` (32 in the paper).
        width_ratios: the grid of width ratios a gene indexes (the paper's 31 ratios 0.10…1.00); must end at 1.0.
        label_smoothing: of the training loss (0.1 in the paper).
        round_to: every channel width a gene gives is rounded down to a multiple of this (e.g. 8; see
            :meth:`~hf_metaprune.ChannelGroups.round_widths`), in training, search and the pruned model alike, so a
            searched MACs target turns into real latency; the generators still read the gene's ratios.
    """

    model_type = "pruningnet"

    def __init__(self, base_architecture: str | None = None, base_model_kwargs: dict[str, Any] | None = None,
                 input_shape: list[int] | tuple[int, ...] = (3, 32, 32), hidden_size: int = 32,
                 width_ratios: list[float] | None = None, label_smoothing: float = 0.1, dataset: str | None = None,
                 validation_scores: dict[str, float] | None = None, round_to: int | None = None, **kwargs):
        input_shape = check_base_fields(type(self).__name__, base_architecture, base_model_kwargs, input_shape)
        if isinstance(hidden_size, bool) or not isinstance(hidden_size, int) or hidden_size < 1:
            raise ValueError(f"PruningNetConfig: hidden_size must be a positive int, got {hidden_size!r}")
        ratios = list(PUBLISHED_WIDTH_RATIOS if width_ratios is None else width_ratios)
        if (not ratios or not all(isinstance(r, (int, float)) and not isinstance(r, bool) and 0 < r <= 1
                                  for r in ratios) or sorted(set(ratios)) != ratios or ratios[-1] != 1.0):
            raise ValueError("PruningNetConfig: width_ratios must be strictly increasing numbers in (0, 1] ending at "
                             f"1.0 (the full width), got {width_ratios!r}")
        if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float)) or \
                not 0 <= label_smoothing < 1:
            raise ValueError(f"PruningNetConfig: label_smoothing must be in [0, 1), got {label_smoothing!r}")
        try:
            check_round_to(round_to)
        except ValueError as e:
            raise ValueError(f"{type(self).__name__}: {e}") from None
        self.base_architecture = base_architecture
        self.base_model_kwargs = dict(base_model_kwargs or {})
        self.input_shape = input_shape
        self.hidden_size = hidden_size
        self.width_ratios = [float(r) for r in ratios]
        self.label_smoothing = float(label_smoothing)
        self.dataset = dataset
        self.validation_scores = validation_scores
        self.round_to = round_to
        super().__init__(**kwargs)
