"""Next-token losses computed a chunk of positions at a time, so the full `[batch, positions, vocab]` logits never
exist: the one implementation behind the proxies' calibration loss, recovery's training loss (with optional
distillation), evaluation's perplexity and the forward-only proxies' statistics.

    loss = next_token_loss(hidden, targets, head, chunk=1024)      # mean cross-entropy, hidden [B, T, H]
    totals = chunked_sum(fn, 1024, hidden, targets)                 # any per-chunk sums, e.g. (NLL, KL)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

Sums = tuple[torch.Tensor, ...]


def head_logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Float32 logits of the output layer for `hidden` (whatever the model's dtype)."""
    return F.linear(hidden, weight, bias).float()


def ce_sum(hidden: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor,
           bias: torch.Tensor | None = None) -> torch.Tensor:
    """Summed next-token cross-entropy of one chunk (`hidden` [..., H], `targets` [...])."""
    logits = head_logits(hidden, weight, bias)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum")


def chunked_sum(fn: Callable[..., torch.Tensor | Sums], chunk: int, *tensors: torch.Tensor, recompute: bool = False,
                start: Sums | None = None) -> Sums:
    """`start` + Σ over chunks of `chunk` positions (dim 1) of `fn(*(t[:, s:s + chunk] for t in tensors))`.

    `fn` returns one tensor or a tuple of them. With `recompute`, every chunk runs under activation
    checkpointing: its logits are recomputed in backward instead of kept, so peak memory is one chunk.
    Sums are added in chunk order, after `start` (so a caller that accumulates over several calls adds in the
    same order as one long loop would).
    """
    totals = list(start) if start is not None else None
    for s in range(0, tensors[0].shape[1], chunk):
        args = tuple(t[:, s:s + chunk] for t in tensors)
        out = checkpoint(fn, *args, use_reentrant=False) if recompute else fn(*args)
        out = out if isinstance(out, tuple) else (out,)
        totals = list(out) if totals is None else [t + o for t, o in zip(totals, out)]
    if totals is None:
        raise ValueError("chunked_sum over zero positions")
    return tuple(totals)


def next_token_loss(hidden: torch.Tensor, targets: torch.Tensor, head: nn.Module, chunk: int = 1024, *,
                    recompute: bool | None = None) -> torch.Tensor:
    """Mean cross-entropy of `hidden` [B, T, H] against `targets` [B, T] through `head` (an `nn.Linear`).

    `recompute` defaults to whether `hidden` carries a gradient: then each chunk is checkpointed.
    """
    if recompute is None:
        recompute = hidden.requires_grad
    (total,) = chunked_sum(lambda h, t: ce_sum(h, t, head.weight, head.bias), chunk, hidden, targets,
                           recompute=recompute)
    return total / targets.numel()


__all__ = ["ce_sum", "chunked_sum", "head_logits", "next_token_loss"]
