"""Memory of a search: activation checkpointing of the decoder blocks, and what autograd keeps per token.

    checkpoint_blocks(adapter)           # each block's activations recomputed in backward (--activation-checkpointing)
    saved = saved_bytes(lambda: adapter.final_hidden(ids), exclude=model.parameters())  # activations kept for backward

A gradient trace keeps, per token and kept block, every activation the backward pass needs (for a
Llama-7B-wide block in bf16 about 0.2 MB per token: docs/scale.md has the measured table); at 16 x 4096
tokens and micro-batch 4 that is far over 80 GB for an 8B model. With `checkpoint_blocks` only each block's
input is kept (hidden_size values per token) and one block's activations are rebuilt at a time during
backward, for one more forward pass (weights are frozen, so a trace is forward + activation backward, about
2 forward passes; checkpointing makes it about 3). It changes no number: tests/test_memory.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from tracenas.models.adapter import ModelAdapter


def checkpoint_blocks(adapter: ModelAdapter) -> None:
    """Run every decoder block under non-reentrant activation checkpointing whenever a gradient is recorded.

    The block objects stay where they are (so slicing, masking, probes and compiled blocks keep working):
    only their `forward` is wrapped. Without a gradient (forward-only proxies) blocks run as before.
    """
    for layer in adapter.layers():
        if getattr(layer, "_tracenas_checkpointed", False):
            continue
        inner = layer.forward

        def forward(*args: Any, _inner: Callable = inner, **kwargs: Any) -> Any:
            if torch.is_grad_enabled():
                return checkpoint(_inner, *args, use_reentrant=False, **kwargs)
            return _inner(*args, **kwargs)

        layer.forward = forward
        layer._tracenas_checkpointed = True


def saved_bytes(fn: Callable[[], Any], exclude: Iterable[torch.Tensor] = ()) -> int:
    """Bytes of the distinct tensor storages autograd saves for backward while `fn()` runs, leaving out those of
    `exclude` (pass the model's parameters: a matmul saves its weight by reference, which costs nothing)."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: dict[tuple[int, torch.dtype], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            seen[(storage.data_ptr(), t.dtype)] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


__all__ = ["checkpoint_blocks", "saved_bytes"]
