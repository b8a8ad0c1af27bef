"""The learning rate of each recovery step (`lr_at`); the AdamW groups are `tracenas.runtime.optim.param_groups`."""

from __future__ import annotations

import math


from tracenas.recover.config import RecoverConfig


def lr_at(step: int, total: int, cfg: RecoverConfig) -> float:
    """Learning rate of optimizer step `step` (0-based) out of `total`."""
    peak, floor = cfg.lr, cfg.lr * cfg.min_lr_ratio
    warmup = round(cfg.warmup_frac * total)
    if step < warmup:
        return peak * (step + 1) / warmup
    if cfg.schedule == "constant":
        return peak
    if cfg.schedule == "cosine":
        span = max(1, total - warmup)
        return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * (step - warmup) / span))
    decay = round(cfg.decay_frac * total)
    start = total - decay
    if step < start:
        return peak
    return peak - (peak - floor) * (step - start) / max(1, decay)  # linear cool-down towards `floor`
