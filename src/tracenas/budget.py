"""What a budget counts (parameters, serving memory or FLOPs per token): torch-free, so configs can name it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class BudgetMetric:
    """What a budget counts.

    * `params`: parameters (the exported `numel()`, tied weights once; embeddings as `include_embeddings`);
    * `memory`: bytes to serve the model: the weights at `dtype_bytes` each, plus the KV cache of `batch`
      sequences of `context` tokens (keys and values of every kept block, at `dtype_bytes`);
    * `flops`: FLOPs to generate one token at position `context`: 2 per weight of every matrix multiply (the
      seven projections of each kept block and the output layer) plus 4 x query heads x head_dim x `context`
      per kept block for the attention scores and their weighted sum. Norms, biases and activations (a few
      FLOPs per channel) are not counted; that is what torch's FLOP counter measures too.
    """

    kind: str = "params"
    dtype_bytes: int = 2
    context: int = 4096
    batch: int = 1

    @property
    def unit(self) -> str:
        return {"params": "parameters", "memory": "bytes", "flops": "FLOPs per token"}[self.kind]

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "dtype_bytes": self.dtype_bytes, "context": self.context, "batch": self.batch}


__all__ = ["BudgetMetric"]
