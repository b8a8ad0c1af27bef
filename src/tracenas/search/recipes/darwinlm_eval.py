"""The torch side of `--strategy darwinlm`: fine-tune a physically sliced candidate in memory, then score it by KL
divergence to the dense model.

    evaluate = CandidateEvaluator(model, adapter, db, calib, train, loss_chunk=1024)
    [(fitness, info)] = evaluate([levels], task)     # fitness = -KL(dense || candidate), higher is better

For each candidate: the `LevelAssembler` moves the full-size model to the candidate's levels (only changed
sub-blocks), `slice_model` copies it physically smaller (pruned heads / channels do not exist, so they cannot
grow back while training), full-parameter AdamW trains the copy on `task.train_tokens` tokens of the training
pool (batch 1: one window per step, `losses.next_token_loss`), and `zero_cost.forward_stats` measures the mean
per-position KL of the dense model's next-token distribution to the copy's on `task.eval_tokens` tokens of the
calibration pool (the last window cut to make the count exact). The dense side is the cached final hidden
states through the dense output layer, kept apart because fine-tuning moves the copy's own. The copy is
then discarded: only the structure survives. Which windows a stage uses comes from `stage_sequences`, so a
candidate's fitness does not depend on which process or in which order it is scored.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from tracenas.arch import Levels
from tracenas.prune.database import LevelAssembler, SparsityDatabase
from tracenas.runtime.losses import next_token_loss
from tracenas.prune.masking import slice_model
from tracenas.models.adapter import ModelAdapter
from tracenas.runtime.optim import param_groups
from tracenas.search.strategies.levels import StageTask, stage_sequences
from tracenas.proxies.zero_cost import ForwardReference, forward_stats, prepare_reference

WEIGHT_DECAY = 0.01  # torch's AdamW default, which the official fine-tuning uses


def finetune_(model: nn.Module, adapter: ModelAdapter, windows: torch.Tensor, lr: float, loss_chunk: int) -> int:
    """Full-parameter AdamW on `windows` [k, L], one window per step (batch 1); returns the steps taken."""
    if windows.shape[0] == 0 or lr == 0:
        return 0
    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW(param_groups(model, WEIGHT_DECAY), lr=lr)
    model.train()
    with torch.enable_grad():
        for ids in windows:
            ids = ids[None].to(device)
            optimizer.zero_grad(set_to_none=True)
            hidden = adapter.final_hidden(ids)[:, :-1]
            next_token_loss(hidden, ids[:, 1:], adapter.lm_head(), loss_chunk).backward()
            optimizer.step()
    model.eval()
    return int(windows.shape[0])


def kl_on_tokens(model: nn.Module, adapter: ModelAdapter, calib: torch.Tensor, reference: torch.Tensor,
                 rows: list[int], tokens: int, head: tuple[torch.Tensor, torch.Tensor | None],
                 micro_batch: int = 1, topk: int = 0) -> tuple[float, int]:
    """(mean KL per scored position, tokens forwarded) over the first `tokens` tokens of windows `rows` of
    `calib` (whole windows, the last one cut), against the dense hidden states `reference` [N, L, H]."""
    seq_len = calib.shape[1]
    full, rest = divmod(tokens, seq_len)
    pieces = []
    if full:
        pieces.append((calib[rows[:full]], reference[rows[:full]]))
    if rest >= 2:
        r = rows[full]
        pieces.append((calib[r:r + 1, :rest], reference[r:r + 1, :rest]))
    total, positions, used = 0.0, 0, 0
    for ids, ref in pieces:
        stats = forward_stats(model, adapter, ids, reference=ForwardReference(ref, ("darwinlm",), head),
                              want=("kl",), micro_batch=micro_batch, kl_topk=topk)
        n = ids.shape[0] * (ids.shape[1] - 1)
        total += stats["kl"] * n
        positions += n
        used += ids.numel()
    return total / positions, used


class CandidateEvaluator:
    """Scores lists of `Levels` for one `StageTask` (see the module docstring)."""

    def __init__(self, model: nn.Module, adapter: ModelAdapter, db: SparsityDatabase | None, calib: torch.Tensor,
                 train: torch.Tensor, *, loss_chunk: int = 1024, micro_batch: int = 1, topk: int = 0) -> None:
        self.model, self.adapter, self.calib, self.train = model, adapter, calib, train
        self.loss_chunk, self.micro_batch, self.topk = loss_chunk, micro_batch, topk
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)  # only the sliced copies train
        self.reference = prepare_reference(model, adapter, calib, micro_batch).hidden  # dense: before any level moves
        self.assembler: LevelAssembler | None = None
        if db is not None:
            self.use(db)
        head = adapter.lm_head()
        self.head = (head.weight, head.bias)  # the dense model's: the full-size model is never trained

    def use(self, db: SparsityDatabase) -> None:
        """Score from `db`'s levels from now on (the model goes back to its original weights first)."""
        if self.assembler is None:
            self.assembler = LevelAssembler(self.model, self.adapter, db)
        else:
            self.assembler.reset(db)

    def restore(self) -> None:
        """Give the model its original weights back (e.g. to build the next supernet from it)."""
        if self.assembler is not None:
            self.assembler.reset()

    def __call__(self, batch: list[Levels], task: StageTask) -> list[tuple[float, dict]]:
        return [self.evaluate(levels, task) for levels in batch]

    def candidate(self, levels: Levels) -> tuple[nn.Module, ModelAdapter]:
        """A physically sliced, trainable copy of the candidate at `levels`."""
        self.assembler.apply(levels)
        small = slice_model(self.model, self.adapter, self.assembler.selection())
        for p in small.parameters():
            p.requires_grad_(True)
        return small, type(self.adapter)(small)

    def evaluate(self, levels: Levels, task: StageTask) -> tuple[float, dict]:
        t0 = time.perf_counter()
        seq_len = self.calib.shape[1]
        rows = stage_sequences(task, self.calib.shape[0], seq_len, task.eval_tokens, salt=0)
        small, adapter = self.candidate(levels)
        steps = 0
        if task.train_tokens > 0:
            windows = stage_sequences(task, self.train.shape[0], self.train.shape[1], task.train_tokens, salt=1)
            steps = finetune_(small, adapter, self.train[windows], task.lr, self.loss_chunk)
        with torch.no_grad():
            kl, used = kl_on_tokens(small, adapter, self.calib, self.reference, rows, task.eval_tokens, self.head,
                                    self.micro_batch, self.topk)
        del small
        info = {"kl": kl, "eval_tokens": used, "finetune_steps": steps,
                "finetune_tokens": steps * int(self.train.shape[1]), "seconds": time.perf_counter() - t0}
        return -kl, info


__all__ = ["CandidateEvaluator", "finetune_", "kl_on_tokens"]
