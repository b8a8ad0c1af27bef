"""Baseline strategies on the same footing as the evolution (same state, resume, history, export path).

* `uniform`: one genome, every block kept, the same retention everywhere (the paper's "Uniform" row).
* `random`: random genomes (random depth and widths, repaired into the budget window), drawn in
  generations of the same sizes as the evolution, so both spend the same number of candidates
  (the paper's Table 4 "Random Search" row). The best by the proxy wins.
"""

from __future__ import annotations

from tracenas.arch import Genome
from tracenas.search.evolution import Evolution

STRATEGIES = ("evolution", "uniform", "random")


class UniformSearch(Evolution):
    def uniform_genome(self) -> Genome:
        """All blocks kept, one attention ratio and one MLP ratio for every block, inside the budget
        window, with the two ratios as close to each other as the grid allows."""
        n = self._num_layers()
        lo, hi = self.window
        best = None
        for a_units in range(1, self.space.attn_units + 1):
            a = a_units / self.space.attn_units
            for m_units in range(self.space.mlp_units, 0, -1):
                m = self.space.snap_mlp(m_units / self.space.mlp_units)
                g = self.space.snap(Genome((True,) * n, (a,) * n, (m,) * n))
                if self.space.params(g) <= hi:
                    if self.space.params(g) >= lo and (best is None or abs(a - m) < abs(best.attn[0] - best.mlp[0])):
                        best = g
                    break
        return best if best is not None else self.anchor(power=0.0)

    def initial_population(self) -> list[Genome]:
        return [self.uniform_genome()]

    def next_population(self) -> list[Genome]:
        return [c.genome for c in self.state.population]


class RandomSearch(Evolution):
    def _random(self) -> Genome:
        n = len(self.prior[0]) if self.prior else self._num_layers()
        keep = [True] * n
        drops = int(self.rng.integers(0, n - self.space.min_layers + 1))
        for k in self.rng.permutation(n)[:drops].tolist():
            keep[k] = False
        attn = tuple(float(x) for x in self.rng.uniform(0.05, 1.0, size=n))
        mlp = tuple(float(x) for x in self.rng.uniform(0.05, 1.0, size=n))
        return Genome(tuple(keep), attn, mlp)

    def _draw(self, count: int, pop: list[Genome]) -> list[Genome]:
        taken = {g.key() for g in pop}
        while len(pop) < count:
            g = self._fresh(self._random, taken)
            taken.add(g.key())
            pop.append(g)
        return pop

    def initial_population(self) -> list[Genome]:
        return self._draw(self.cfg.population, [])

    def next_population(self) -> list[Genome]:
        # keep the best so far (as elites) and draw fresh random genomes for the rest
        ranked = sorted(self.state.population, key=lambda c: (-c.score, c.genome.key()))
        return self._draw(self.cfg.population, [c.genome for c in ranked[: self.cfg.elites]])


def strategy_class(name: str) -> type[Evolution]:
    from tracenas.errors import TracenasError

    classes = {"evolution": Evolution, "uniform": UniformSearch, "random": RandomSearch}
    if name not in classes:
        raise TracenasError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}")
    return classes[name]
