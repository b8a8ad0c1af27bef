"""Evolutionary search over genomes (paper Alg. 1, Sec. 3.5), resumable generation by generation.

This module knows nothing about models: it gets a `Space` (grid, parameter count) and a
`score(genome) -> float` callable, and keeps all randomness in one numpy Generator whose state is
saved with the population, so a resumed search draws exactly what an uninterrupted one would.

Operators (choices where the paper is vague, documented in docs/search.md):
- depth crossover: contiguous range `[i, j)` of keep bits taken from parent B, the rest from A;
- width crossover: interpolation `r = a*r_A + (1-a)*r_B` with one `a ~ U(0, 1)` per child;
- depth mutation: with probability `mutation_depth` per child, flip one random keep bit;
- width mutation: each ratio, with probability `mutation_width`, is multiplied by `exp(N(0, sigma))`;
  if that lands on the same grid point it moves one grid step in the jitter's direction;
- budget repair: all kept ratios are rescaled by one factor (binary search) so that the parameter
  count lands in `[C*(1-tol), C]`; a genome whose depth makes that window unreachable is rejected
  and redrawn (rejections are counted in the state).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np

from tracenas.arch import Genome

NEG_INF = float("-inf")


class Space(Protocol):
    min_layers: int

    def snap(self, genome: Genome) -> Genome: ...
    def params(self, genome: Genome) -> int: ...
    def snap_attn(self, ratio: float) -> float: ...
    def snap_mlp(self, ratio: float) -> float: ...
    @property
    def attn_units(self) -> int: ...
    @property
    def mlp_units(self) -> int: ...


@dataclass
class EvolutionConfig:
    population: int = 30
    elites: int = 10
    iterations: int = 50
    crossover: float = 0.7
    mutation_depth: float = 0.2
    mutation_width: float = 0.2
    jitter_sigma: float = 0.25
    budget_tolerance: float = 0.02
    max_tries: int = 200
    seed: int = 0
    prior_powers: tuple[float, ...] = (0.0, 0.5, 1.0)
    init_depth_flips: int = 3

    def __post_init__(self) -> None:
        from tracenas.errors import TracenasError

        if self.population < 2:
            raise TracenasError("--population must be at least 2")
        if not 1 <= self.elites < self.population:
            raise TracenasError("--elites must be in [1, population)")
        if self.iterations < 1:
            raise TracenasError("--iterations must be at least 1")
        for name in ("crossover", "mutation_depth", "mutation_width"):
            if not 0 <= getattr(self, name) <= 1:
                raise TracenasError(f"--{name.replace('_', '-')} must be a probability in [0, 1]")
        if not 0 < self.budget_tolerance < 1:
            raise TracenasError("--budget-tolerance must be in (0, 1)")


@dataclass
class Candidate:
    genome: Genome
    score: float
    params: int

    def to_dict(self) -> dict:
        return {"genome": self.genome.to_dict(), "score": _json_float(self.score), "params": self.params}

    @classmethod
    def from_dict(cls, d: dict) -> "Candidate":
        return cls(Genome.from_dict(d["genome"]), _from_json_float(d["score"]), int(d["params"]))


def _json_float(x: float) -> float | str:
    return x if math.isfinite(x) else str(x)


def _from_json_float(x) -> float:
    return float(x)


@dataclass
class EvolutionState:
    generation: int = 0  # generations completed
    population: list[Candidate] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)  # genome key -> score (the cache)
    rng_state: dict | None = None
    history_len: int = 0
    rejected: int = 0
    best_per_generation: list[float] = field(default_factory=list)
    mean_per_generation: list[float] = field(default_factory=list)

    def best(self) -> Candidate | None:
        finite = [c for c in self.population if c.score > NEG_INF]
        return max(finite, key=lambda c: (c.score, c.genome.key())) if finite else None

    def to_dict(self) -> dict:
        return {
            "generation": self.generation,
            "population": [c.to_dict() for c in self.population],
            "scores": {k: _json_float(v) for k, v in self.scores.items()},
            "rng_state": self.rng_state,
            "history_len": self.history_len,
            "rejected": self.rejected,
            "best_per_generation": [_json_float(x) for x in self.best_per_generation],
            "mean_per_generation": [_json_float(x) for x in self.mean_per_generation],
        }

    @classmethod
    def from_dict(cls, d: dict) -> "EvolutionState":
        return cls(
            generation=int(d["generation"]),
            population=[Candidate.from_dict(c) for c in d["population"]],
            scores={k: _from_json_float(v) for k, v in d["scores"].items()},
            rng_state=d["rng_state"],
            history_len=int(d["history_len"]),
            rejected=int(d.get("rejected", 0)),
            best_per_generation=[float(x) for x in d.get("best_per_generation", [])],
            mean_per_generation=[float(x) for x in d.get("mean_per_generation", [])],
        )


class Evolution:
    """Runs generations; `on_scored(candidate, generation, info)` and `on_generation(state)` are hooks."""

    def __init__(self, cfg: EvolutionConfig, space: Space, budget: int,
                 score: Callable[[Genome], tuple[float, dict]], prior: tuple[list[float], list[float]] | None = None):
        self.cfg, self.space, self.budget, self.score_fn = cfg, space, budget, score
        self.prior = prior
        self.rng = np.random.default_rng(cfg.seed)
        self.state = EvolutionState(rng_state=self.rng.bit_generator.state)
        self.on_scored: Callable[[Candidate, int, dict], None] | None = None
        self.on_generation: Callable[[EvolutionState], None] | None = None

    # --- state ---------------------------------------------------------------------------------
    def load_state(self, state: EvolutionState) -> None:
        self.state = state
        self.rng.bit_generator.state = state.rng_state

    @property
    def window(self) -> tuple[int, int]:
        return int(math.floor(self.budget * (1 - self.cfg.budget_tolerance))), self.budget

    # --- budget repair -------------------------------------------------------------------------
    def _scaled(self, g: Genome, s: float) -> Genome:
        return self.space.snap(Genome(g.keep, tuple(min(1.0, max(1e-6, a * s)) for a in g.attn),
                                      tuple(min(1.0, max(1e-6, m * s)) for m in g.mlp)))

    def repair(self, genome: Genome) -> Genome | None:
        """Rescale widths into the budget window, or None if the depth makes the window unreachable."""
        lo, hi = self.window
        genome = self.space.snap(genome)
        if sum(genome.keep) < self.space.min_layers:
            return None
        p = self.space.params(genome)
        if lo <= p <= hi:
            return genome
        if self.space.params(self._scaled(genome, 1e-6)) > hi:
            return None
        s_lo, s_hi = 1e-6, 1.0
        if p < lo:
            big = max(1.0 / max(min(genome.attn + genome.mlp), 1e-6), 1.0) * 2
            if self.space.params(self._scaled(genome, big)) < lo:
                return None
            s_lo, s_hi = 1.0, big
        for _ in range(60):  # params are monotone in the scale factor
            mid = 0.5 * (s_lo + s_hi)
            if self.space.params(self._scaled(genome, mid)) <= hi:
                s_lo = mid
            else:
                s_hi = mid
        best = self._scaled(genome, s_lo)
        return best if lo <= self.space.params(best) <= hi else None

    # --- initial population --------------------------------------------------------------------
    def anchor(self, power: float = 1.0) -> Genome:
        """An importance-prior warm start: widths proportional to `(I_l / mean I)^power`, all blocks kept
        (dropping the least important blocks only when even minimal widths exceed the budget).
        `power=0` is the uniform model; 1 is the raw prior."""
        n = len(self.prior[0]) if self.prior else self._num_layers()
        if self.prior:
            a = np.asarray(self.prior[0], dtype=float)
            m = np.asarray(self.prior[1], dtype=float)
            a = a / a.mean() if a.mean() > 0 else np.ones(n)
            m = m / m.mean() if m.mean() > 0 else np.ones(n)
        else:
            a = m = np.ones(n)
        a, m = np.clip(a, 1e-6, None) ** power, np.clip(m, 1e-6, None) ** power
        order = np.argsort(a + m, kind="stable")  # least important first
        keep = [True] * n
        for drop in [None, *order.tolist()]:
            if drop is not None:
                if sum(keep) <= self.space.min_layers:
                    break
                keep[drop] = False
            g = Genome(tuple(keep), tuple(float(x) * 0.5 for x in a), tuple(float(x) * 0.5 for x in m))
            repaired = self.repair(g)
            if repaired is not None:
                return repaired
        from tracenas.errors import BudgetError

        raise BudgetError("no genome in the search space meets the budget window; raise --budget-tolerance")

    def _num_layers(self) -> int:
        return self.space.shape.num_layers  # type: ignore[attr-defined]

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

    def _fresh(self, make: Callable[[], Genome], taken: set[str]) -> Genome:
        """Draw children until one is in budget and never scored before (bounded tries)."""
        fallback = None
        for _ in range(self.cfg.max_tries):
            child = self.repair(make())
            if child is None:
                self.state.rejected += 1
                continue
            key = child.key()
            if key not in taken and key not in self.state.scores:
                return child
            fallback = fallback or child
        if fallback is None:
            from tracenas.errors import BudgetError

            raise BudgetError("could not draw any in-budget child; raise --budget-tolerance")
        return fallback

    # --- generations ---------------------------------------------------------------------------
    def _evaluate(self, genomes: list[Genome]) -> list[Candidate]:
        out = []
        for g in genomes:
            key = g.key()
            if key in self.state.scores:
                out.append(Candidate(g, self.state.scores[key], self.space.params(g)))
                continue
            value, info = self.score_fn(g)
            cand = Candidate(g, float(value), self.space.params(g))
            self.state.scores[key] = cand.score
            self.state.history_len += 1
            if self.on_scored:
                self.on_scored(cand, self.state.generation, info)
            out.append(cand)
        return out

    def _init_child(self, parent: Genome) -> Genome:
        """A generation-0 child: up to `init_depth_flips` blocks dropped, then the usual mutation."""
        keep = list(parent.keep)
        flips = int(self.rng.integers(self.cfg.init_depth_flips + 1))
        for k in self.rng.permutation(len(keep))[:flips].tolist():
            if sum(keep) > self.space.min_layers:
                keep[k] = False
        return self.mutate(Genome(tuple(keep), parent.attn, parent.mlp))

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
            child = self._fresh(lambda p=parent: self._init_child(p), taken)
            taken.add(child.key())
            pop.append(child)
        return pop

    def next_population(self) -> list[Genome]:
        ranked = sorted(self.state.population, key=lambda c: (-c.score, c.genome.key()))
        elites = [c.genome for c in ranked[: self.cfg.elites]]
        pop, taken = list(elites), {g.key() for g in elites}

        def child() -> Genome:
            ia, ib = self.rng.choice(len(elites), size=2, replace=len(elites) < 2).tolist()
            a, b = elites[ia], elites[ib]
            c = self.crossover(a, b) if self.rng.random() < self.cfg.crossover else a
            return self.mutate(c)

        while len(pop) < self.cfg.population:
            c = self._fresh(child, taken)
            taken.add(c.key())
            pop.append(c)
        return pop

    def step(self) -> None:
        """Run one generation (the initial population for generation 0) and save the RNG state."""
        genomes = self.initial_population() if self.state.generation == 0 else self.next_population()
        cands = self._evaluate(genomes)
        self.state.population = cands
        self.state.generation += 1
        finite = [c.score for c in cands if c.score > NEG_INF]
        self.state.best_per_generation.append(max(finite) if finite else NEG_INF)
        self.state.mean_per_generation.append(float(np.mean(finite)) if finite else NEG_INF)
        self.state.rng_state = self.rng.bit_generator.state
        if self.on_generation:
            self.on_generation(self.state)

    def run(self) -> Candidate | None:
        while self.state.generation < self.cfg.iterations:
            self.step()
        return self.best_overall()

    def best_overall(self) -> Candidate | None:
        """Best finite-scored in-budget genome ever scored (elites are carried, so it is in the population)."""
        return self.state.best()
