"""`DepthRecipe`: the evolution's recipe for `--strategy depth`, plus one forward pass for the blocks' influence."""

from __future__ import annotations

import logging

import torch

from tracenas.search.recipes.runner import SearchRecipe
from tracenas.search.strategies.depth import DepthSearch

log = logging.getLogger(__name__)


@torch.no_grad()
def block_influence(adapter, batches: torch.Tensor, micro_batch: int = 1) -> list[float]:
    """ShortGPT's Block Influence of every block: 1 - the mean cosine similarity of its input and output hidden
    states over the tokens of `batches`."""
    layers = adapter.layers()
    sums = [0.0] * len(layers)
    count = [0]
    hooks = []

    def hook(i):
        def fn(_mod, args, kwargs, out):
            x = args[0] if args else kwargs["hidden_states"]
            y = out[0] if isinstance(out, tuple) else out
            cos = torch.nn.functional.cosine_similarity(x.float(), y.float(), dim=-1)
            sums[i] += float(cos.double().sum())
        return fn

    for i, layer in enumerate(layers):
        hooks.append(layer.register_forward_hook(hook(i), with_kwargs=True))
    device = next(adapter.model.parameters()).device
    try:
        for start in range(0, batches.shape[0], micro_batch):
            ids = batches[start:start + micro_batch].to(device)
            adapter.final_hidden(ids)
            count[0] += ids.numel()
    finally:
        for h in hooks:
            h.remove()
    return [1.0 - s / count[0] for s in sums]


class DepthRecipe(SearchRecipe):
    """The evolution's recipe, plus one forward pass for the blocks' influence (rank 0's, shared)."""

    strategy: DepthSearch

    def _setup_strategy(self) -> None:
        super()._setup_strategy()
        influence = self.dist.run_on_main(lambda: block_influence(self.adapter, self.batches, self.cfg.micro_batch))
        self.strategy.influence = influence
        log.info("block influence: %s", ", ".join(f"{x:.3f}" for x in influence))


__all__ = ["DepthRecipe", "block_influence"]
