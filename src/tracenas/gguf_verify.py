"""Does a GGUF decode like the checkpoint it was written from? Greedy agreement with transformers, two ways.

    cont, misses = teacher_forced_misses(model, "model.gguf", ids, 32)

Free-running greedy decoding (`float_greedy` vs llama.cpp's `greedy`) compounds: once one step picks the other of
two near-tied tokens, every later step has another context and the two continuations part for good. A quantized
file (q8_0, and bf16 just the same) does that on any model whose continuation passes through near-ties, which a
pruned model's often does. `teacher_forced_misses` asks the well-posed question instead: given the float model's
own continuation as context, does llama.cpp pick the float model's token at every position, and where it does not,
how close was the float model's own call (its top-2 logit margin)?
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

from tracenas import llamacpp


@torch.no_grad()
def float_greedy(model: nn.Module, ids: list[int], n: int) -> list[int]:
    """`n` greedy tokens from `model` (full forward each step, no cache), in the model's own dtype."""
    x = torch.tensor([ids])
    for _ in range(n):
        x = torch.cat([x, model(x, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)], 1)
    return x[0, len(ids):].tolist()


def agreeing_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens two continuations share."""
    return next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


@torch.no_grad()
def teacher_forced_misses(model: nn.Module, gguf: str | os.PathLike, ids: list[int], n: int, *,
                          threads: int = 1) -> tuple[list[int], list[tuple[int, float]]]:
    """The float model's `n`-token greedy continuation of `ids`, and (position, float top-2 logit margin) for each
    position where llama.cpp, given the same prompt + continuation so far, picks another next token."""
    cont = float_greedy(model, ids, n)
    x = torch.tensor([ids + cont])
    logits = model(x).logits[0, len(ids) - 1:-1].float()
    top2 = logits.topk(2).values
    answers = llamacpp.run_tasks(gguf, [{"op": "logits", "tokens": (ids + cont)[:len(ids) + k]} for k in range(n)],
                                 threads=threads)
    return cont, [(k, float(top2[k, 0] - top2[k, 1])) for k in range(n)
                  if int(np.argmax(answers[k]["logits"])) != cont[k]]


__all__ = ["agreeing_prefix", "float_greedy", "teacher_forced_misses"]
