"""`_LossModel`, the wrapper DDP/FSDP see: one forward that returns recovery's chunked training loss
(`tracenas.runtime.losses.chunked_lm_loss`)."""

from __future__ import annotations

import torch
from torch import nn

from tracenas.runtime.losses import chunked_lm_loss
from tracenas.recover.config import RecoverConfig


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
