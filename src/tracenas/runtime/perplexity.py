"""Token-weighted perplexity of a causal LM on a token stream or windows, through the chunked loss (the full
logits never exist). Shared by eval, validate-proxy and the benchmarks.

    perplexity(model, tokens, seq_len=512)["ppl"]
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import torch
from torch import nn

from tracenas.runtime.errors import TracenasError
from tracenas.runtime.losses import chunked_lm_loss


def _windows(tokens: torch.Tensor, seq_len: int) -> list[torch.Tensor]:
    if tokens.dim() == 2:
        return list(tokens)
    if tokens.dim() != 1:
        raise TracenasError(f"perplexity needs a 1-D token stream or [N, L] windows, got shape {tuple(tokens.shape)}")
    out = [tokens[i:i + seq_len] for i in range(0, tokens.numel(), seq_len)]
    return [w for w in out if w.numel() >= 2]  # a 1-token tail predicts nothing


@torch.inference_mode()
def perplexity(model: nn.Module, tokens: torch.Tensor, seq_len: int = 512, micro_batch: int = 4, *,
               chunk: int = 2048, progress: bool = False) -> dict[str, Any]:
    """Token-weighted perplexity of `model` on `tokens`.

    `tokens` is a 1-D stream (cut into non-overlapping `seq_len` windows, the last one possibly shorter)
    or a LongTensor [N, L] of windows used as they are. Returns `ppl`, `nll` (mean per predicted
    token, nats), `tokens` (predicted tokens: each window's length minus one) and `windows`.
    """
    from tqdm.auto import tqdm


    windows = _windows(tokens, seq_len)
    if not windows:
        raise TracenasError("perplexity needs at least one window of two or more tokens")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    groups = defaultdict(list)  # equal lengths batch together (only the tail differs)
    for w in windows:
        groups[w.numel()].append(w)
    batches = [torch.stack(ws[i:i + micro_batch]) for ws in groups.values() for i in range(0, len(ws), micro_batch)]
    try:
        for ids in tqdm(batches, desc="perplexity", unit="batch", disable=not progress, dynamic_ncols=True):
            ids = ids.to(device)
            hidden = model.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state
            n = ids.shape[0] * (ids.shape[1] - 1)
            mean, _ = chunked_lm_loss(hidden[:, :-1].reshape(n, -1), model.get_output_embeddings(),
                                      ids[:, 1:].reshape(-1), chunk)
            total += float(mean) * n
            count += n
    finally:
        model.train(was_training)
    nll = total / count
    return {"ppl": math.exp(nll), "nll": nll, "tokens": count, "windows": len(windows), "seq_len": seq_len}
