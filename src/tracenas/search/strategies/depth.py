"""`--strategy depth`: a depth-only baseline that drops the blocks with the lowest Block Influence (ShortGPT).

    BI_l = 1 - E_tokens[cos(x_l, x_{l+1})]        x_l: the hidden state entering block l

Blocks that change their input least are dropped first, until the parameter count is within the budget; the
others keep every head and channel. Whole blocks are coarse (3.5M parameters each in SmolLM2-135M), so the
result usually lies below the budget window, and reaching a budget can need more drops than `--min-layers`
allows by default (half the blocks): the baseline then stops at `--min-layers` and says so; pass
`--min-layers 1` to let it reach the budget. One candidate, scored by the proxy for the history only. Pure Python: the influence is measured by
`search.depth_recipe`.
"""

from __future__ import annotations

import logging

from tracenas.arch import Genome
from tracenas.search.strategies.simple import OneCandidate

log = logging.getLogger(__name__)


class DepthSearch(OneCandidate):
    recipe = "tracenas.search.recipes.depth:DepthRecipe"
    influence: list[float] | None = None  # set by the recipe before the first generation

    def depth_genome(self) -> Genome:
        """Every block at full width; the lowest-influence blocks dropped until the cost is within the budget
        (or `min_layers` blocks are left)."""
        if self.influence is None:
            raise RuntimeError("DepthSearch needs the blocks' influence before it proposes (see DepthRecipe)")
        n = len(self.influence)
        keep = [True] * n
        hi = self.window[1]
        for i in sorted(range(n), key=lambda i: (self.influence[i], i)):
            genome = Genome(tuple(keep), (1.0,) * n, (1.0,) * n)
            if self.space.cost(genome) <= hi or sum(keep) <= self.space.min_layers:
                break
            keep[i] = False
        genome = Genome(tuple(keep), (1.0,) * n, (1.0,) * n)
        if self.space.cost(genome) > hi:
            log.warning("depth: %d blocks left (--min-layers) still cost %d > budget %d; pass a lower --min-layers",
                        sum(keep), self.space.cost(genome), hi)
        return genome

    def initial_population(self) -> list[Genome]:
        return [self.depth_genome()]


__all__ = ["DepthSearch"]
