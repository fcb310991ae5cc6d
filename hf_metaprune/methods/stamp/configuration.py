"""Configuration of STAMP, set-based task-adaptive meta-pruning (Song, Yoon, Yang, Hwang, 2020)."""
from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

from ..base import check_base_fields

BUDGETS = ("macs", "kl")


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"STAMPConfig: {name} must be a positive int, got {value!r}")
    return value


def _number(value: Any, name: str, low: float, high: float, closed_low: bool = True) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (
        low <= value if closed_low else low < value) and value <= high
    if not ok:
        raise ValueError(f"STAMPConfig: {name} must be a number in {'[' if closed_low else '('}{low}, {high}], "
                         f"got {value!r}")
    return float(value)


class STAMPConfig(PretrainedConfig):
    """A set encoder over a task's features and one channel-mask generator per coupled group of a backbone.

    Args:
        base_architecture: the timm name of the backbone whose channels the masks select (e.g. ``cifar_resnet20``).
        base_model_kwargs: keyword arguments of ``timm.create_model`` (``{"num_classes": 6}``: the reference classes).
        input_shape: one image's shape without the batch dimension (tracing the coupled groups).
        hidden_size: width of the Set Transformer and the generators (128 in the reference Set Transformer).
        num_heads: attention heads of every set-attention block (4).
        num_inducing_points: learned inducing points of each ISAB (16–32).
        num_isab: ISAB blocks in the encoder (2).
        init_keep_logit: the generators' initial logit bias: every channel starts kept with sigmoid(3) ≈ 0.95.
        init_from_norms: start each unit's logit from its group-L2 norm's z-score within its group (the backbone's
            own ranking), so an untrained generator already ranks like DepGraph; ``False``: every unit ties.
        mask_temperature: of the relaxed Bernoulli masks during meta-training (0.1, as BBDropout ports use).
        budget: ``"macs"`` — λ·max(0, E[MACs]/MACs − 1/speed-up), the speed-up a user asks for — or ``"kl"`` —
            the KL divergence of each unit's keep probability from a Bernoulli prior keeping ``1/speed-up``, each
            unit weighted by the MACs it carries.
        budget_weight: λ of the budget term.
        speed_ups: the MACs speed-ups meta-training samples a target from (one per episode); the generator reads
            the target, so one STAMP serves every speed-up in the range.
        set_size: images per task sample the encoder reads (class-balanced, 100–500 in the paper's range).
        feature_size: width of the backbone's pooled features; group_sizes: units per coupled group (both found by
            tracing the backbone when a model is first built, then stored so a checkpoint rebuilds without tracing).
    """

    model_type = "stamp"

    def __init__(self, base_architecture: str | None = None, base_model_kwargs: dict[str, Any] | None = None,
                 input_shape: list[int] | tuple[int, ...] = (3, 32, 32), hidden_size: int = 128, num_heads: int = 4,
                 num_inducing_points: int = 16, num_isab: int = 2, init_keep_logit: float = 3.0,
                 init_from_norms: bool = True,
                 mask_temperature: float = 0.1, budget: str = "macs", budget_weight: float = 5.0,
                 speed_ups: list[float] | tuple[float, ...] = (1.5, 4.0), set_size: int = 200,
                 feature_size: int | None = None, group_sizes: list[int] | None = None, dataset: str | None = None,
                 validation_scores: dict[str, float] | None = None, **kwargs):
        input_shape = check_base_fields(type(self).__name__, base_architecture, base_model_kwargs, input_shape)
        hidden_size, num_heads = _positive_int(hidden_size, "hidden_size"), _positive_int(num_heads, "num_heads")
        if hidden_size % num_heads:
            raise ValueError(f"STAMPConfig: hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads})")
        if budget not in BUDGETS:
            raise ValueError(f"STAMPConfig: budget must be one of {BUDGETS}, got {budget!r}")
        speed_ups = list(speed_ups) if isinstance(speed_ups, (list, tuple)) else speed_ups
        if (not isinstance(speed_ups, list) or len(speed_ups) != 2 or not all(
                isinstance(s, (int, float)) and not isinstance(s, bool) and s >= 1 for s in speed_ups)
                or speed_ups[0] > speed_ups[1]):
            raise ValueError(f"STAMPConfig: speed_ups must be [low, high] with 1 <= low <= high, got {speed_ups!r}")
        if feature_size is not None:
            _positive_int(feature_size, "feature_size")
        if group_sizes is not None and (not isinstance(group_sizes, (list, tuple)) or not group_sizes or not all(
                isinstance(g, int) and not isinstance(g, bool) and g > 0 for g in group_sizes)):
            raise ValueError(f"STAMPConfig: group_sizes must be a list of positive ints, got {group_sizes!r}")
        self.base_architecture = base_architecture
        self.base_model_kwargs = dict(base_model_kwargs or {})
        self.input_shape = input_shape
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.num_inducing_points = _positive_int(num_inducing_points, "num_inducing_points")
        self.num_isab = _positive_int(num_isab, "num_isab")
        self.init_keep_logit = _number(init_keep_logit, "init_keep_logit", -20, 20)
        if not isinstance(init_from_norms, bool):
            raise TypeError(f"STAMPConfig: init_from_norms must be a bool, got {init_from_norms!r}")
        self.init_from_norms = init_from_norms
        self.mask_temperature = _number(mask_temperature, "mask_temperature", 0, 10, closed_low=False)
        self.budget = budget
        self.budget_weight = _number(budget_weight, "budget_weight", 0, 1e6)
        self.speed_ups = [float(s) for s in speed_ups]
        self.set_size = _positive_int(set_size, "set_size")
        self.feature_size = feature_size
        self.group_sizes = list(group_sizes) if group_sizes is not None else None
        self.dataset = dataset
        self.validation_scores = validation_scores
        super().__init__(**kwargs)
