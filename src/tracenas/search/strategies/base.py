"""`SearchStrategy`: the interface every search method implements, and the generation loop they share.

    strategy = strategy_class("evolution")(cfg, space, budget, score)   # score(genome) -> (value, info)
    while not strategy.done():
        strategy.step()        # propose -> evaluate (cached) -> tell; then `on_generation(state)`
    best = strategy.best()

A strategy decides *which* genomes to score next (`initial_population`, `next_population`); the base
class owns what every strategy must do the same way so that runs resume exactly and histories stay
comparable: one seeded numpy Generator whose state is saved after every generation, the score cache
(nothing is scored twice), the history counter and the hooks the runner writes its files from. The
generation in progress is part of the state (`state.pending`: its proposed genomes), so a state saved
after any scored candidate resumes exactly; a strategy that overrides `step` should call
`begin_generation` for its genomes and clear `state.pending` before `tell`, or it resumes by generation only.
Reusable operators (budget repair, importance anchors, fresh draws) live in `operators` and are held,
not inherited. Pure Python + numpy: no torch or transformers.

Scoring goes through `score_batch(genomes)` (all of a pass's new genomes at once), which the runner backs
with `tracenas.runtime.distributed.map_ranks`: under `torchrun` the genomes are split over the ranks and every rank
gets every score in order, so a strategy that scores through `evaluate` or `score_batch` is distributed for
free and its state stays identical on all ranks.

A strategy that needs more than one scoring pass per generation (DarwinLM's multistep selection:
score many offspring cheaply, fine-tune and re-score the survivors on more tokens) overrides `step`
and calls `evaluate` per pass; one that keeps more state (Týr's round, a level database) extends
`state_dict` / `load_state_dict` with keys of its own. Register it with
`tracenas.search.registry.register_strategy` to make it a `--strategy` choice.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import TYPE_CHECKING, Callable

import numpy as np

from tracenas.arch import Genome
from tracenas.search.strategies.operators import BudgetRepair, FreshDraws, Prior, Space
from tracenas.search.strategies.state import NEG_INF, Candidate, EvolutionConfig, EvolutionState

if TYPE_CHECKING:
    from tracenas.search.config import SearchConfig

ScoreFn = Callable[[Genome], tuple[float, dict]]  # genome -> (score, info: loss, rho_attn, seconds, ...)
# genomes -> their (score, info) in order, yielded as they become known (tracenas.runtime.distributed.map_ranks
# spreads them over the ranks of a torchrun job; one process yields each as soon as it is scored)
BatchScoreFn = Callable[[list[Genome]], Iterable[tuple[float, dict]]]


class SearchStrategy(ABC):
    """Runs generations; `on_scored(candidate, generation, info)` and `on_generation(state)` are hooks."""

    def __init__(self, cfg: EvolutionConfig, space: Space, budget: int, score: ScoreFn,
                 prior: Prior | None = None, score_batch: BatchScoreFn | None = None) -> None:
        self.cfg, self.space, self.budget, self.score_fn = cfg, space, budget, score
        # how `evaluate` scores the genomes it has not seen: by default one after another through `score`
        self.score_batch: BatchScoreFn = score_batch or (lambda genomes: map(score, genomes))
        self.prior = prior
        self.rng = np.random.default_rng(cfg.seed)
        self.repair = BudgetRepair(space, budget, cfg.budget_tolerance)
        self.draws = FreshDraws(self.repair, cfg.max_tries)
        self.state = self.initial_state()
        self.on_scored: Callable[[Candidate, int, dict], None] | None = None
        self.on_generation: Callable[[EvolutionState], None] | None = None

    @classmethod
    def config_from(cls, search: SearchConfig) -> EvolutionConfig:
        """This strategy's settings from the `tracenas search` options (resolved)."""
        return EvolutionConfig(population=search.population, elites=search.elites, iterations=search.iterations,
                               crossover=search.crossover, mutation_depth=search.mutation_depth,
                               mutation_width=search.mutation_width, jitter_sigma=search.jitter_sigma,
                               budget_tolerance=search.budget_tolerance, seed=search.seed,
                               prior_powers=search.prior_power_list(), init_depth_flips=search.init_depth_flips)

    # --- what a strategy decides -------------------------------------------------------------------
    @abstractmethod
    def initial_population(self) -> list[Genome]:
        """Generation 0."""

    @abstractmethod
    def next_population(self) -> list[Genome]:
        """The generation after `self.state.population` (scored candidates of the last generation)."""

    def propose(self) -> list[Genome]:
        """The genomes of the next generation, each in the budget window."""
        return self.initial_population() if self.state.generation == 0 else self.next_population()

    def planned_candidates(self) -> int:
        """How many candidates a whole run scores at most (for the progress bar)."""
        return self.cfg.population + (self.cfg.iterations - 1) * (self.cfg.population - self.cfg.elites)

    @property
    def generations(self) -> int:
        return self.cfg.iterations

    # --- what every strategy does the same way -----------------------------------------------------
    def initial_state(self) -> EvolutionState:
        return EvolutionState(rng_state=self.rng.bit_generator.state)

    @property
    def window(self) -> tuple[int, int]:
        return self.repair.window

    def evaluate(self, genomes: list[Genome]) -> list[Candidate]:
        """Score a batch: known genomes come from the cache; the new ones (each once, in order) go to
        `score_batch` together, so a distributed scorer can spread them over ranks. Each new one is cached,
        counted in `state.history_len` and reported to `on_scored` as its score arrives, in order."""
        new: dict[str, Genome] = {}
        for g in genomes:
            key = g.key()
            if key not in self.state.scores and key not in new:
                new[key] = g
        for g, (value, info) in zip(new.values(), self.score_batch(list(new.values()))):
            cand = Candidate(g, float(value), self.space.params(g))
            self.state.scores[g.key()] = cand.score
            self.state.history_len += 1
            if self.on_scored:
                self.on_scored(cand, self.state.generation, info)
        return [Candidate(g, self.state.scores[g.key()], self.space.params(g)) for g in genomes]

    def tell(self, candidates: list[Candidate]) -> None:
        """Record a scored generation as the population, its statistics and the RNG state."""
        self.state.population = candidates
        self.state.generation += 1
        finite = [c.score for c in candidates if c.score > NEG_INF]
        self.state.best_per_generation.append(max(finite) if finite else NEG_INF)
        self.state.mean_per_generation.append(float(np.mean(finite)) if finite else NEG_INF)
        self.state.rng_state = self.rng.bit_generator.state

    def begin_generation(self) -> list[Genome]:
        """The genomes of the generation in progress: `state.pending` when a resumed state holds them,
        else newly proposed ones, recorded as pending together with the RNG state after proposing, so that
        a state saved after any scored candidate resumes exactly (`state.pending`)."""
        if self.state.pending is None:
            self.state.pending = self.propose()
            self.state.rng_state = self.rng.bit_generator.state
        return self.state.pending

    def step(self) -> None:
        """Run one generation (the initial population for generation 0) and save the RNG state."""
        candidates = self.evaluate(self.begin_generation())
        self.state.pending = None
        self.tell(candidates)
        if self.on_generation:
            self.on_generation(self.state)

    def done(self) -> bool:
        return self.state.generation >= self.generations

    def run(self) -> Candidate | None:
        while not self.done():
            self.step()
        return self.best()

    @classmethod
    def cost_lines(cls, cost: dict) -> list[str]:
        """Report lines for what this strategy's search cost beyond scoring candidates (`arch.json`'s
        `search_cost`: training, supernets, ...); none by default."""
        return []

    def best(self) -> Candidate | None:
        """Best finite-scored in-budget genome ever scored (elites are carried, so it is in the population)."""
        return self.state.best()

    def state_dict(self) -> dict:
        """JSON-able state (the `search/state.json` format), RNG included."""
        return self.state.to_dict()

    def load_state_dict(self, d: dict) -> None:
        self.state = EvolutionState.from_dict(d)
        self.rng.bit_generator.state = self.state.rng_state
