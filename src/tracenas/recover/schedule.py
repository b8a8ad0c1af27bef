"""Optimizer and schedule pieces: the learning rate of each step (`lr_at`) and the AdamW groups (`param_groups`)."""

from __future__ import annotations

import math
from collections.abc import Iterable

from torch import nn

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


def param_groups(model_or_params: nn.Module | Iterable[nn.Parameter], weight_decay: float) -> list[dict]:
    """AdamW groups: trainable matrices (dim >= 2) decayed, the rest (norms, biases) not; parameter order kept."""
    params = list(model_or_params.parameters() if isinstance(model_or_params, nn.Module) else model_or_params)
    decay = [p for p in params if p.requires_grad and p.dim() >= 2]
    rest = [p for p in params if p.requires_grad and p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
