"""The learning-rate schedule of both training loops (the fusion model's and the backbone's): linear warm-up, then
cosine decay to a floor."""

from __future__ import annotations

import math


def lr_factor(step: int, warmup: int, total: int, floor: float = 0.0) -> float:
    """Multiplier of the peak learning rate at optimiser step ``step`` (from 0): ``(step + 1) / warmup`` for the
    first ``warmup`` steps, then a cosine from 1 down to ``floor`` at step ``total`` (``floor`` after it)."""
    if step < warmup:
        return (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p))
