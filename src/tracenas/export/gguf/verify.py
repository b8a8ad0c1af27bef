"""Does a GGUF decode like the checkpoint it was written from? Greedy agreement with transformers, two ways.

    cont, misses = teacher_forced_misses(model, "model.gguf", ids, 32)
    # or, with more questions for the same file in one llama.cpp load:
    cont, margins = float_greedy_margins(model, ids, 32)
    answers = llamacpp.run_tasks("model.gguf", forced_tasks(ids, cont) + more_tasks)
    misses = forced_misses(cont, margins, answers)

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

from tracenas.export.gguf import llamacpp


@torch.no_grad()
def float_greedy_margins(model: nn.Module, ids: list[int], n: int) -> tuple[list[int], list[float]]:
    """`n` greedy tokens (full forward each step, no cache) and the top-2 logit margin of each step's choice."""
    x, margins = torch.tensor([ids]), []
    for _ in range(n):
        logits = model(x, use_cache=False).logits[0, -1]
        top2 = logits.float().topk(2).values
        margins.append(float(top2[0] - top2[1]))
        x = torch.cat([x, logits.argmax().view(1, 1)], 1)
    return x[0, len(ids):].tolist(), margins


def float_greedy(model: nn.Module, ids: list[int], n: int) -> list[int]:
    """`n` greedy tokens from `model` (full forward each step, no cache), in the model's own dtype."""
    return float_greedy_margins(model, ids, n)[0]


def agreeing_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens two continuations share."""
    return next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def forced_tasks(ids: list[int], cont: list[int]) -> list[dict]:
    """llama.cpp tasks (`run_tasks`) asking for the next-token logits after `ids` + each prefix of `cont`."""
    return [{"op": "logits", "tokens": (ids + cont)[:len(ids) + k]} for k in range(len(cont))]


def forced_misses(cont: list[int], margins: list[float], answers: list[dict]) -> list[tuple[int, float]]:
    """(position, float top-2 margin) wherever the answers to `forced_tasks` pick another token than `cont`."""
    return [(k, margins[k]) for k in range(len(cont)) if int(np.argmax(answers[k]["logits"])) != cont[k]]


def teacher_forced_misses(model: nn.Module, gguf: str | os.PathLike, ids: list[int], n: int, *,
                          threads: int = 1) -> tuple[list[int], list[tuple[int, float]]]:
    """The float model's `n`-token greedy continuation of `ids`, and (position, float top-2 logit margin) for each
    position where llama.cpp, given the same prompt + continuation so far, picks another next token."""
    cont, margins = float_greedy_margins(model, ids, n)
    return cont, forced_misses(cont, margins, llamacpp.run_tasks(gguf, forced_tasks(ids, cont), threads=threads))


__all__ = ["agreeing_prefix", "float_greedy", "float_greedy_margins", "forced_misses", "forced_tasks",
           "teacher_forced_misses"]
