"""Learning-rate schedules: linear warmup, then constant, cosine or linear decay to min_lr."""

from __future__ import annotations

import math

from mugv_train.config import OptimConfig


def lr_at(step: int, total_steps: int, optim: OptimConfig) -> float:
    """Learning rate for optimizer step ``step`` (0-based) of ``total_steps``.

    Warmup: lr * (step + 1) / warmup_steps. After it, with progress p in [0, 1] over the
    remaining steps: constant lr; cosine min + (lr - min) (1 + cos(pi p)) / 2; linear
    lr + (min - lr) p. SFT uses the decaying ("annealed") shapes (paper §4.2.3).
    """
    if step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    if optim.schedule == "constant":
        return optim.lr
    span = max(1, total_steps - optim.warmup_steps - 1)
    p = min(1.0, (step - optim.warmup_steps) / span)
    if optim.schedule == "cosine":
        return optim.min_lr + (optim.lr - optim.min_lr) * 0.5 * (1.0 + math.cos(math.pi * p))
    if optim.schedule == "linear":
        return optim.lr + (optim.min_lr - optim.lr) * p
    raise ValueError(f"unknown schedule {optim.schedule!r}; use constant, cosine or linear")
