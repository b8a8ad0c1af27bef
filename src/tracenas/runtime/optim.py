"""Optimizer parameter groups shared by every stage that trains (recovery, DarwinLM's fine-tuning, validate-proxy's
recovery of its candidates)."""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn


def param_groups(model_or_params: nn.Module | Iterable[nn.Parameter], weight_decay: float) -> list[dict]:
    """AdamW groups: trainable matrices (dim >= 2) decayed, the rest (norms, biases) not; parameter order kept."""
    params = list(model_or_params.parameters() if isinstance(model_or_params, nn.Module) else model_or_params)
    decay = [p for p in params if p.requires_grad and p.dim() >= 2]
    rest = [p for p in params if p.requires_grad and p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
