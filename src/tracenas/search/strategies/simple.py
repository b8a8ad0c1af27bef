"""Baseline strategies on the same footing as the evolution (same state, resume, history, export path).

* `uniform`: one genome, every block kept, the same retention everywhere (the paper's "Uniform" row).
* `random`: random genomes (random depth and widths, repaired into the budget window), drawn in
  generations of the same sizes as the evolution, so both spend the same number of candidates
  (the paper's Table 4 "Random Search" row). The best by the proxy wins.

Both implement `SearchStrategy` directly and share the evolution's operators by composition.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from tracenas.arch import Genome
from tracenas.search.strategies.operators import importance_anchor, num_layers
from tracenas.search.registry import strategy_class, strategy_names
from tracenas.search.strategies.state import EvolutionConfig
from tracenas.search.strategies.base import SearchStrategy

if TYPE_CHECKING:
    from tracenas.search.config import SearchConfig

STRATEGIES = strategy_names()  # the built-in ones; `strategy_names()` also lists registered ones


class OneCandidate(SearchStrategy):
    """A strategy that proposes one genome and scores it once (one generation; --population / --elites do not
    apply): `initial_population` returns it."""

    @classmethod
    def config_from(cls, search: SearchConfig) -> EvolutionConfig:
        return dataclasses.replace(super().config_from(search), population=2, elites=1, iterations=1)

    def planned_candidates(self) -> int:
        return 1

    def next_population(self) -> list[Genome]:
        return [c.genome for c in self.state.population]


class UniformSearch(OneCandidate):

    @classmethod
    def check_options(cls, search: SearchConfig) -> None:
        """None: --population and --elites do not apply."""

    def uniform_genome(self) -> Genome:
        """All blocks kept, one attention ratio and one MLP ratio for every block, inside the budget
        window, with the two ratios as close to each other as the grid allows."""
        n = num_layers(self.space, None)
        lo, hi = self.window
        best = None
        for a_units in range(1, self.space.attn_units + 1):
            a = a_units / self.space.attn_units
            for m_units in range(self.space.mlp_units, 0, -1):
                m = self.space.snap_mlp(m_units / self.space.mlp_units)
                g = self.space.snap(Genome((True,) * n, (a,) * n, (m,) * n))
                if self.space.cost(g) <= hi:
                    if self.space.cost(g) >= lo and (best is None or abs(a - m) < abs(best.attn[0] - best.mlp[0])):
                        best = g
                    break
        return best if best is not None else importance_anchor(self.repair, self.prior, power=0.0)

    def initial_population(self) -> list[Genome]:
        return [self.uniform_genome()]


class RandomSearch(SearchStrategy):
    def _random(self) -> Genome:
        n = num_layers(self.space, self.prior)
        keep = [True] * n
        drops = int(self.rng.integers(0, n - self.space.min_layers + 1))
        for k in self.rng.permutation(n)[:drops].tolist():
            keep[k] = False
        attn = tuple(float(x) for x in self.rng.uniform(0.05, 1.0, size=n))
        mlp = tuple(float(x) for x in self.rng.uniform(0.05, 1.0, size=n))
        return Genome(tuple(keep), attn, mlp)

    def initial_population(self) -> list[Genome]:
        return self.draws.fill(self._random, [], self.cfg.population, self.state)

    def next_population(self) -> list[Genome]:
        # keep the best so far (as elites) and draw fresh random genomes for the rest
        ranked = sorted(self.state.population, key=lambda c: (-c.score, c.genome.key()))
        elites = [c.genome for c in ranked[: self.cfg.elites]]
        return self.draws.fill(self._random, elites, self.cfg.population, self.state)


__all__ = ["OneCandidate", "RandomSearch", "STRATEGIES", "UniformSearch", "strategy_class"]
