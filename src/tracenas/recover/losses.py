"""The training loss: next-token cross-entropy (+ optional distillation KL) computed a chunk of logits at a
time, and `_LossModel`, the wrapper DDP/FSDP see."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from tracenas.recover.config import RecoverConfig


def _ce_sum(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, labels: torch.Tensor):
    logits = F.linear(hidden, weight, bias).float()
    return F.cross_entropy(logits, labels, reduction="sum")


def _kd_sum(hidden, weight, bias, labels, t_hidden, t_weight, t_bias, temperature: float, alpha: float):
    logits = F.linear(hidden, weight, bias).float()
    ce = F.cross_entropy(logits, labels, reduction="sum")
    with torch.no_grad():
        t_logp = F.log_softmax(F.linear(t_hidden, t_weight, t_bias).float() / temperature, dim=-1)
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
    totals: dict[str, torch.Tensor] = {}
    loss = hidden.new_zeros((), dtype=torch.float32)
    for i in range(0, n, chunk):
        args: tuple = (hidden[i:i + chunk], head.weight, head.bias, labels[i:i + chunk])
        if teacher is None:
            fn, parts = _ce_sum, ("ce",)
        else:
            fn, parts = _kd_sum, ("loss", "ce", "kl")
            args += (teacher[0][i:i + chunk], teacher[1].weight, teacher[1].bias, temperature, alpha)
        out = checkpoint(fn, *args, use_reentrant=False) if recompute else fn(*args)
        out = out if isinstance(out, tuple) else (out,)
        loss = loss + out[0]
        for name, value in zip(parts, out):
            totals[name] = totals.get(name, 0) + value.detach()
    return loss / n, {k: v / n for k, v in totals.items()}


class _LossModel(nn.Module):
    """Wraps the student so that DDP/FSDP see one forward that returns the (chunked) loss."""

    def __init__(self, model: nn.Module, cfg: RecoverConfig, teacher: nn.Module | None = None) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.__dict__["teacher"] = teacher  # not a submodule: frozen, and DDP must neither wrap nor sync it
        self._no_split_modules = getattr(model, "_no_split_modules", None)  # for FSDP auto-wrap

    def forward(self, input_ids: torch.Tensor):
        hidden = self.model.get_decoder()(input_ids=input_ids, use_cache=False).last_hidden_state
        labels = input_ids[:, 1:].reshape(-1)
        hidden = hidden[:, :-1].reshape(-1, hidden.shape[-1])
        teacher = None
        if self.teacher is not None:
            with torch.no_grad():
                t_hidden = self.teacher.get_decoder()(input_ids=input_ids, use_cache=False).last_hidden_state
            teacher = (t_hidden[:, :-1].reshape(-1, t_hidden.shape[-1]), self.teacher.get_output_embeddings())
        return chunked_lm_loss(hidden, self.model.get_output_embeddings(), labels, self.cfg.loss_chunk,
                               teacher, self.cfg.distill_alpha, self.cfg.distill_temperature)
