"""SGD as the trainer runs it: weight decay on weights only, and a linear warm-up then cosine or poly decay."""
from __future__ import annotations

import math
from typing import Callable

import torch

__all__ = ['SCHEDULES', 'POLY_POWER', 'param_groups', 'schedule', 'resolve_schedule']

SCHEDULES = ("auto", "cosine", "poly")
POLY_POWER = 0.9  # the original DLA segment.py: lr * (1 - epoch / epochs) ** 0.9


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """The trainable parameters in two groups: decay on weights, none on biases and norm scales (ndim 1)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def resolve_schedule(name: str, dense: bool) -> tuple[str, str]:
    """``auto`` -> ``poly`` for dense data (the original DLA segment.py), ``cosine`` for classification;
    returns (schedule, why) for ``metrics.json``."""
    if name != "auto":
        return name, f"schedule={name} as set"
    if dense:
        return "poly", f"schedule=auto on dense data: poly (power {POLY_POWER}), as the original DLA segment.py"
    return "cosine", "schedule=auto on classification data: cosine"


def schedule(total: int, warmup: int, kind: str = "cosine") -> Callable[[int], float]:
    """LR factor per step: linear warm-up to 1, then cosine, or poly ``(1 - t) ** 0.9``, to 0 at ``total``."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if kind == "poly":
            return max(0.0, 1.0 - (step - warmup) / max(1, total - warmup)) ** POLY_POWER
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
    return factor
