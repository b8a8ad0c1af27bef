"""Ground truth of a candidate: eval perplexity of the sliced model zero-shot and along one short recovery."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from tracenas.runtime.errors import TracenasError
from tracenas.prune.masking import LayerSelection, slice_model
from tracenas.models.adapter import ModelAdapter
from tracenas.proxies.traces import causal_lm_loss
from tracenas.runtime.optim import param_groups


def short_recover(model: nn.Module, train_tokens: torch.Tensor, steps: int, lr: float, *, batch_size: int | None = None,
                  micro_batch: int = 1, seed: int = 0, warmup_frac: float = 0.1, weight_decay: float = 0.0,
                  max_grad_norm: float = 1.0, loss_chunk: int = 1024, autocast: torch.dtype | None = None,
                  callback: Callable[[int], None] | None = None) -> list[float]:
    """Deterministic in-memory recovery: AdamW, fp32, linear warmup then linear decay, fixed batches.

    Step i trains on rows `[i*B, (i+1)*B)` of `train_tokens` (B = batch_size, default N // steps), so
    every candidate sees the same tokens in the same order. `callback(step)` runs after each step.
    `autocast` (e.g. torch.bfloat16) runs the matmuls in that dtype; weights and AdamW stay fp32.
    Returns the training loss per step. The model is trained in place and left in eval mode.
    """
    from tracenas.models import get_adapter

    if steps < 1:
        return []
    bs = batch_size or train_tokens.shape[0] // steps
    if bs < 1 or bs * steps > train_tokens.shape[0]:
        raise TracenasError(f"{steps} recovery steps of {batch_size} sequences need more than {train_tokens.shape[0]}")
    torch.manual_seed(seed)
    adapter = get_adapter(model)
    device = next(model.parameters()).device
    params = [p for p in model.parameters()]
    for p in params:
        p.requires_grad_(True)
    # every parameter is trainable now, so the groups hold all of them
    opt_ = torch.optim.AdamW(param_groups(params, weight_decay), lr=lr, betas=(0.9, 0.95), eps=1e-8)
    warmup = max(1, round(warmup_frac * steps))
    losses = []
    model.train()
    try:
        for step in range(steps):
            scale = (step + 1) / warmup if step < warmup else (steps - step) / max(1, steps - warmup + 1)
            for group in opt_.param_groups:
                group["lr"] = lr * scale
            batch = train_tokens[step * bs:(step + 1) * bs]
            total = 0.0
            for s in range(0, bs, micro_batch):
                ids = batch[s:s + micro_batch].to(device)
                with torch.autocast(device.type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
                    loss = causal_lm_loss(adapter, ids, loss_chunk)
                (loss * ids.shape[0] / bs).backward()
                total += float(loss.detach()) * ids.shape[0] / bs
            if max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            opt_.step()
            opt_.zero_grad(set_to_none=True)
            losses.append(total)
            if callback is not None:
                callback(step + 1)
    finally:
        model.eval()
        for p in params:
            p.requires_grad_(False)
    return losses


def ground_truth(model: nn.Module, adapter: ModelAdapter, selection: list[LayerSelection], eval_tokens: torch.Tensor,
                 train_tokens: torch.Tensor, steps: list[int], *, lr: float, batch_size: int, micro_batch: int = 1,
                 seed: int = 0, loss_chunk: int = 1024, autocast: torch.dtype | None = None) -> dict:
    """Eval perplexity of the sliced candidate zero-shot and after each of `steps` of one short recovery.

    `model` should hold fp32 weights (the candidate is sliced from them and trained in fp32); `autocast`
    runs the recovery and eval matmuls in that dtype.
    """
    from tracenas.runtime.perplexity import perplexity

    t0 = time.perf_counter()
    small = slice_model(model, adapter, selection).float()
    small.requires_grad_(False)
    res: dict[str, Any] = {"ppl": {}, "nll": {}, "params": sum(p.numel() for p in small.parameters())}
    eval_seconds = 0.0

    def evaluate(step: int) -> None:
        nonlocal eval_seconds
        if step not in steps:
            return
        te = time.perf_counter()
        device = next(small.parameters()).device
        with torch.autocast(device.type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
            r = perplexity(small, eval_tokens, seq_len=eval_tokens.shape[1], micro_batch=max(1, micro_batch),
                           chunk=loss_chunk)
        eval_seconds += time.perf_counter() - te
        res["ppl"][str(step)], res["nll"][str(step)] = r["ppl"], r["nll"]

    evaluate(0)
    zero_shot_eval, tr = eval_seconds, time.perf_counter()
    res["train_loss"] = short_recover(small, train_tokens, max(steps), lr, batch_size=batch_size,
                                      micro_batch=micro_batch, seed=seed, loss_chunk=loss_chunk, autocast=autocast,
                                      callback=evaluate)
    res["seconds"] = {"total": time.perf_counter() - t0, "eval": eval_seconds,
                      "recover": time.perf_counter() - tr - (eval_seconds - zero_shot_eval)}
    return res
