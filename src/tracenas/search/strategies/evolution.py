"""Evolutionary search over genomes (paper Alg. 1, Sec. 3.5), resumable generation by generation.

This module knows nothing about models: it gets a `Space` (grid, parameter count) and a
`score(genome) -> (float, info)` callable, and keeps all randomness in one numpy Generator whose state is
saved with the population, so a resumed search draws exactly what an uninterrupted one would
(`SearchStrategy` runs the generations; this class only says which genomes come next).

Operators (choices where the paper is vague, documented in docs/search.md):
- depth crossover: contiguous range `[i, j)` of keep bits taken from parent B, the rest from A;
- width crossover: interpolation `r = a*r_A + (1-a)*r_B` with one `a ~ U(0, 1)` per child;
- depth mutation: with probability `mutation_depth` per child, flip one random keep bit;
- width mutation: each ratio, with probability `mutation_width`, is multiplied by `exp(N(0, sigma))`;
  if that lands on the same grid point it moves one grid step in the jitter's direction;
- budget repair (`operators.BudgetRepair`): all kept ratios are rescaled by one factor (binary search) so
  that the parameter count lands in `[C*(1-tol), C]`; a genome whose depth makes that window
  unreachable is rejected and redrawn (rejections are counted in the state).
"""

from __future__ import annotations

import math
from typing import Callable

from tracenas.arch import Genome
from tracenas.search.strategies.operators import Space, importance_anchor
from tracenas.search.strategies.state import NEG_INF, Candidate, EvolutionConfig, EvolutionState
from tracenas.search.strategies.base import SearchStrategy


class Evolution(SearchStrategy):
    """Elites, crossover and mutation; generation 0 from importance anchors and their children."""

    def anchor(self, power: float = 1.0) -> Genome:
        return importance_anchor(self.repair, self.prior, power)

    # --- operators -----------------------------------------------------------------------------
    def crossover(self, a: Genome, b: Genome) -> Genome:
        n = a.num_layers
        i, j = sorted(self.rng.choice(n + 1, size=2, replace=False).tolist())
        keep = tuple(b.keep[k] if i <= k < j else a.keep[k] for k in range(n))
        w = float(self.rng.random())
        attn = tuple(w * x + (1 - w) * y for x, y in zip(a.attn, b.attn))
        mlp = tuple(w * x + (1 - w) * y for x, y in zip(a.mlp, b.mlp))
        return Genome(keep, attn, mlp)

    def _jitter(self, r: float, units: int, snap: Callable[[float], float]) -> float:
        z = float(self.rng.normal(0.0, self.cfg.jitter_sigma))
        new = snap(min(1.0, max(1e-6, r * math.exp(z))))
        if new == snap(r):  # too small to leave the grid point: take one step in the jitter's direction
            new = snap(min(1.0, max(1e-6, r + math.copysign(1.0 / units, z))))
        return new

    def mutate(self, g: Genome) -> Genome:
        keep = list(g.keep)
        if self.rng.random() < self.cfg.mutation_depth:
            k = int(self.rng.integers(len(keep)))
            if keep[k] and sum(keep) <= self.space.min_layers:
                dropped = [i for i, x in enumerate(keep) if not x]
                if dropped:
                    keep[dropped[int(self.rng.integers(len(dropped)))]] = True
            else:
                keep[k] = not keep[k]
        attn = [self._jitter(a, self.space.attn_units, self.space.snap_attn)
                if self.rng.random() < self.cfg.mutation_width else a for a in g.attn]
        mlp = [self._jitter(m, self.space.mlp_units, self.space.snap_mlp)
               if self.rng.random() < self.cfg.mutation_width else m for m in g.mlp]
        return Genome(tuple(keep), tuple(attn), tuple(mlp))

    def _init_child(self, parent: Genome) -> Genome:
        """A generation-0 child: up to `init_depth_flips` blocks dropped, then the usual mutation."""
        keep = list(parent.keep)
        flips = int(self.rng.integers(self.cfg.init_depth_flips + 1))
        for k in self.rng.permutation(len(keep))[:flips].tolist():
            if sum(keep) > self.space.min_layers:
                keep[k] = False
        return self.mutate(Genome(tuple(keep), parent.attn, parent.mlp))

    # --- generations ---------------------------------------------------------------------------
    def initial_population(self) -> list[Genome]:
        """Anchors from the importance prior at each of `prior_powers`, then children of them."""
        pop, taken = [], set()
        for power in self.cfg.prior_powers:
            g = self.anchor(power)
            if g.key() not in taken and len(pop) < self.cfg.population:
                pop.append(g)
                taken.add(g.key())
        anchors = list(pop)
        while len(pop) < self.cfg.population:
            parent = anchors[len(pop) % len(anchors)]
            child = self.draws.draw(lambda p=parent: self._init_child(p), taken, self.state)
            taken.add(child.key())
            pop.append(child)
        return pop

    def next_population(self) -> list[Genome]:
        ranked = sorted(self.state.population, key=lambda c: (-c.score, c.genome.key()))
        elites = [c.genome for c in ranked[: self.cfg.elites]]

        def child() -> Genome:
            ia, ib = self.rng.choice(len(elites), size=2, replace=len(elites) < 2).tolist()
            a, b = elites[ia], elites[ib]
            c = self.crossover(a, b) if self.rng.random() < self.cfg.crossover else a
            return self.mutate(c)

        return self.draws.fill(child, list(elites), self.cfg.population, self.state)


__all__ = ["NEG_INF", "Candidate", "Evolution", "EvolutionConfig", "EvolutionState", "SearchStrategy", "Space"]
