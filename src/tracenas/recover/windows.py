"""The training data: the 'train' split as one token stream, cut into `seq_len` windows in a seeded order."""

from __future__ import annotations

import torch

from tracenas.recover.config import RecoverConfig


class TrainWindows:
    """The training stream as `seq_len` windows; global window j is a fixed function of (seed, j)."""

    def __init__(self, stream: torch.Tensor, seq_len: int, seed: int) -> None:
        self.count = stream.numel() // seq_len
        self.windows = stream[: self.count * seq_len].view(self.count, seq_len)
        self.seed = seed
        self._orders: dict[int, torch.Tensor] = {}

    def _order(self, epoch: int) -> torch.Tensor:
        if epoch not in self._orders:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._orders = {epoch: torch.randperm(self.count, generator=g)}  # keep one epoch in memory
        return self._orders[epoch]

    def batch(self, start: int, size: int) -> torch.Tensor:
        """Global windows [start, start + size) as a LongTensor [size, seq_len]."""
        rows = [self._order(j // self.count)[j % self.count] for j in range(start, start + size)]
        return self.windows[torch.stack(rows)]


def _training_stream(tokenizer, cfg: RecoverConfig) -> torch.Tensor:
    from tracenas.data import load_split, token_stream

    return token_stream(tokenizer, load_split(cfg.data, "train"))
