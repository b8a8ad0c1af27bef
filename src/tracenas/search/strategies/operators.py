"""Operators every search strategy shares: budget repair, importance anchors, fresh draws, the score cache.

    from tracenas.search.strategies.operators import BudgetRepair, importance_anchor
    repair = BudgetRepair(space, budget, tolerance=0.02)
    genome = repair(genome)                      # into [C*(1-tol), C] parameters, or None
    anchor = importance_anchor(repair, prior, power=0.5)

Strategies (evolution, random, uniform, and the next ones) hold these pieces rather than inheriting
them from one another, so a new strategy picks the ones it needs. Pure Python + numpy: no torch.
"""

from __future__ import annotations

import math
from typing import Callable, Protocol

import numpy as np

from tracenas.arch import Genome
from tracenas.models.shape import ModelShape
from tracenas.search.strategies.state import EvolutionState


class Space(Protocol):
    """What the search needs from `tracenas.arch.SearchSpace`: the grid and the exact cost the budget counts."""

    @property
    def min_layers(self) -> int: ...
    @property
    def shape(self) -> ModelShape: ...
    def snap(self, genome: Genome) -> Genome: ...
    def cost(self, genome: Genome) -> int: ...
    def params(self, genome: Genome) -> int: ...
    def snap_attn(self, ratio: float) -> float: ...
    def snap_mlp(self, ratio: float) -> float: ...
    @property
    def attn_units(self) -> int: ...
    @property
    def mlp_units(self) -> int: ...


Prior = tuple[list[float], list[float]]  # per-layer attention and MLP importance


class BudgetRepair:
    """Rescales all kept ratios by one factor so that a genome's cost (parameters, bytes or FLOPs) lands in the window
    `[floor(C*(1-tol)), C]`; a genome whose depth makes the window unreachable repairs to None."""

    def __init__(self, space: Space, budget: int, tolerance: float) -> None:
        self.space, self.budget, self.tolerance = space, budget, tolerance

    @property
    def window(self) -> tuple[int, int]:
        return int(math.floor(self.budget * (1 - self.tolerance))), self.budget

    def _scaled(self, g: Genome, s: float) -> Genome:
        return self.space.snap(Genome(g.keep, tuple(min(1.0, max(1e-6, a * s)) for a in g.attn),
                                      tuple(min(1.0, max(1e-6, m * s)) for m in g.mlp)))

    def __call__(self, genome: Genome) -> Genome | None:
        """Rescale widths into the budget window, or None if the depth makes the window unreachable."""
        lo, hi = self.window
        genome = self.space.snap(genome)
        if sum(genome.keep) < self.space.min_layers:
            return None
        p = self.space.cost(genome)
        if lo <= p <= hi:
            return genome
        if self.space.cost(self._scaled(genome, 1e-6)) > hi:
            return None
        s_lo, s_hi = 1e-6, 1.0
        if p < lo:
            big = max(1.0 / max(min(genome.attn + genome.mlp), 1e-6), 1.0) * 2
            if self.space.cost(self._scaled(genome, big)) < lo:
                return None
            s_lo, s_hi = 1.0, big
        for _ in range(60):  # every cost is monotone in the scale factor
            mid = 0.5 * (s_lo + s_hi)
            if self.space.cost(self._scaled(genome, mid)) <= hi:
                s_lo = mid
            else:
                s_hi = mid
        best = self._scaled(genome, s_lo)
        return best if lo <= self.space.cost(best) <= hi else None


def num_layers(space: Space, prior: Prior | None) -> int:
    return len(prior[0]) if prior else space.shape.num_layers


def importance_anchor(repair: BudgetRepair, prior: Prior | None, power: float = 1.0) -> Genome:
    """An importance-prior warm start: widths proportional to `(I_l / mean I)^power`, all blocks kept
    (dropping the least important blocks only when even minimal widths exceed the budget).
    `power=0` is the uniform model; 1 is the raw prior."""
    space = repair.space
    n = num_layers(space, prior)
    if prior:
        a = np.asarray(prior[0], dtype=float)
        m = np.asarray(prior[1], dtype=float)
        a = a / a.mean() if a.mean() > 0 else np.ones(n)
        m = m / m.mean() if m.mean() > 0 else np.ones(n)
    else:
        a = m = np.ones(n)
    a, m = np.clip(a, 1e-6, None) ** power, np.clip(m, 1e-6, None) ** power
    order = np.argsort(a + m, kind="stable")  # least important first
    keep = [True] * n
    for drop in [None, *order.tolist()]:
        if drop is not None:
            if sum(keep) <= space.min_layers:
                break
            keep[drop] = False
        g = Genome(tuple(keep), tuple(float(x) * 0.5 for x in a), tuple(float(x) * 0.5 for x in m))
        repaired = repair(g)
        if repaired is not None:
            return repaired
    from tracenas.runtime.errors import BudgetError

    raise BudgetError("no genome in the search space meets the budget window; raise --budget-tolerance")


class FreshDraws:
    """Draws genomes until one is in budget and new: not in `taken` (this generation) and not in the
    score cache (`state.scores`). Out-of-budget draws are counted in `state.rejected` (saved with the state)."""

    def __init__(self, repair: BudgetRepair, max_tries: int) -> None:
        self.repair, self.max_tries = repair, max_tries

    def draw(self, make: Callable[[], Genome], taken: set[str], state: EvolutionState) -> Genome:
        """A repaired draw of `make()`; after `max_tries` draws that were all known, the first of them."""
        fallback = None
        for _ in range(self.max_tries):
            child = self.repair(make())
            if child is None:
                state.rejected += 1
                continue
            key = child.key()
            if key not in taken and key not in state.scores:
                return child
            fallback = fallback or child
        if fallback is None:
            from tracenas.runtime.errors import BudgetError

            raise BudgetError("could not draw any in-budget child; raise --budget-tolerance")
        return fallback

    def fill(self, make: Callable[[], Genome], pop: list[Genome], size: int, state: EvolutionState) -> list[Genome]:
        """Append fresh draws of `make()` to `pop` until it holds `size` genomes, all distinct."""
        taken = {g.key() for g in pop}
        while len(pop) < size:
            g = self.draw(make, taken, state)
            taken.add(g.key())
            pop.append(g)
        return pop
