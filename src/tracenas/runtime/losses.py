"""Next-token losses computed a chunk of positions at a time, so the full `[batch, positions, vocab]` logits never
exist: the one implementation behind the proxies' calibration loss, recovery's training loss (with optional
distillation: `chunked_lm_loss`), evaluation's perplexity and the forward-only proxies' statistics.

    loss = next_token_loss(hidden, targets, head, chunk=1024)      # mean cross-entropy, hidden [B, T, H]
    totals = chunked_sum(fn, 1024, hidden, targets)                 # any per-chunk sums, e.g. (NLL, KL)

The cross-entropy goes through torch's fused, chunked `F.linear_cross_entropy` where torch has it (>= 2.13):
it computes the input gradient chunk by chunk during the forward, so unlike the checkpointed fallback it
never recomputes the output layer in backward (2x faster on CPU at SmolLM2's head, benchmarks/scale.py
prints it). Older torch, or `TRACENAS_CE=chunked` in the environment (or `set_ce_impl("chunked")`), use the
fallback: `ce_sum` over chunks of positions, checkpointed when a gradient flows. Both give the same loss and
gradients up to float rounding (tests/test_losses.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

Sums = tuple[torch.Tensor, ...]
CE_IMPLS = ("auto", "fused", "chunked")
_ce_impl = os.environ.get("TRACENAS_CE", "auto")


def fused_ce_available() -> bool:
    """Whether this torch has the chunked `F.linear_cross_entropy` (torch >= 2.13)."""
    return hasattr(F, "linear_cross_entropy") and hasattr(nn, "LinearCrossEntropyOptions")


def set_ce_impl(impl: str) -> str:
    """Choose the cross-entropy of `next_token_loss` for this process: auto (fused where available), fused or
    chunked. Returns the previous choice."""
    global _ce_impl
    if impl not in CE_IMPLS:
        raise ValueError(f"unknown cross-entropy implementation {impl!r}; choose from {', '.join(CE_IMPLS)}")
    if impl == "fused" and not fused_ce_available():
        raise ValueError("fused cross-entropy needs torch >= 2.13 (F.linear_cross_entropy)")
    previous, _ce_impl = _ce_impl, impl
    return previous


def ce_impl() -> str:
    """The cross-entropy `next_token_loss` uses now: "fused" or "chunked"."""
    if _ce_impl not in CE_IMPLS:
        raise ValueError(f"TRACENAS_CE={_ce_impl!r}; choose from {', '.join(CE_IMPLS)}")
    if _ce_impl == "auto":
        return "fused" if fused_ce_available() else "chunked"
    return _ce_impl


def head_logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Float32 logits of the output layer for `hidden` (whatever the model's dtype).

    Under autocast the output layer is computed in float32 too: bf16 logits (8 significant bits) are what
    made bf16 recovery of a heavily damaged model diverge (docs/comparison.md: cross-entropy back up from 6.1 to
    8.0 within 25 steps where float32 kept falling; with this, the two track each other).
    """
    if torch.is_autocast_enabled(hidden.device.type):
        with torch.autocast(hidden.device.type, enabled=False):
            return F.linear(hidden.float(), weight.float(), None if bias is None else bias.float())
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

    Fused (`ce_impl()`): `F.linear_cross_entropy` over chunks of `chunk x B` rows, as many logits at a time as
    the fallback holds. Fallback: `recompute` defaults to whether `hidden` carries a gradient: then each chunk
    is checkpointed.
    """
    if ce_impl() == "fused":
        rows = hidden.reshape(-1, hidden.shape[-1]).to(head.weight.dtype)  # not an autocast op: one dtype
        options = nn.LinearCrossEntropyOptions(chunking_method=None, batch_chunk_size=max(1, chunk * hidden.shape[0]))
        total = F.linear_cross_entropy(rows, head.weight, targets.reshape(-1), linear_bias=head.bias,
                                       reduction="sum", options=options)
        return total.float() / targets.numel()
    if recompute is None:
        recompute = hidden.requires_grad
    (total,) = chunked_sum(lambda h, t: ce_sum(h, t, head.weight, head.bias), chunk, hidden, targets,
                           recompute=recompute)
    return total / targets.numel()





def _kd_sums(hidden, labels, t_hidden, weight, bias, t_weight, t_bias, temperature: float, alpha: float):
    """(mixed loss, CE, KL) summed over one chunk of rows."""
    logits = head_logits(hidden, weight, bias)
    ce = F.cross_entropy(logits, labels, reduction="sum")
    with torch.no_grad():
        t_logp = F.log_softmax(head_logits(t_hidden, t_weight, t_bias) / temperature, dim=-1)
    kl = F.kl_div(F.log_softmax(logits / temperature, dim=-1), t_logp, log_target=True, reduction="sum")
    kl = kl * temperature**2
    return (1 - alpha) * ce + alpha * kl, ce.detach(), kl.detach()


def chunked_lm_loss(hidden: torch.Tensor, head: nn.Module, labels: torch.Tensor, chunk: int,
                    teacher: tuple[torch.Tensor, nn.Module] | None = None, alpha: float = 0.0,
                    temperature: float = 1.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean next-token loss of `hidden` [N, H] against `labels` [N], `chunk` rows of logits at a time.

    With grad enabled and more than one chunk, each chunk is checkpointed: its logits are recomputed
    in backward instead of kept, so peak memory is one chunk of logits (student and teacher), not
    [N, vocab]. `teacher = (teacher_hidden [N, H_t], teacher_head)` mixes in the distillation term.
    """
    n = hidden.shape[0]
    recompute = torch.is_grad_enabled() and n > chunk
    # `chunked_sum` chunks dim 1: rows become positions of one sequence, and each fn sees its [chunk, H] rows
    if teacher is None:
        (ce,) = chunked_sum(lambda h, t: ce_sum(h[0], t[0], head.weight, head.bias), chunk, hidden[None],
                            labels[None], recompute=recompute)
        return ce / n, {"ce": ce.detach() / n}
    t_hidden, t_head = teacher
    loss, ce, kl = chunked_sum(
        lambda h, t, th: _kd_sums(h[0], t[0], th[0], head.weight, head.bias, t_head.weight, t_head.bias,
                                  temperature, alpha),
        chunk, hidden[None], labels[None], t_hidden[None], recompute=recompute)
    return loss / n, {"loss": loss.detach() / n, "ce": ce / n, "kl": kl / n}


__all__ = ["CE_IMPLS", "ce_impl", "ce_sum", "chunked_lm_loss", "chunked_sum", "fused_ce_available", "head_logits", "next_token_loss",
           "set_ce_impl"]
