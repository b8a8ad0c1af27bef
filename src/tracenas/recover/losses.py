"""The training loss: next-token cross-entropy (+ optional distillation KL) computed a chunk of logits at a
time, and `_LossModel`, the wrapper DDP/FSDP see."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tracenas.losses import ce_sum, chunked_sum, head_logits
from tracenas.recover.config import RecoverConfig


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
