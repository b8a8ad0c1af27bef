"""`Strategy`, what every search method shares, and `SearchStrategy`, the population interface most implement.

    strategy = strategy_class("evolution")(cfg, space, budget, score)   # score(genome) -> (value, info)
    while not strategy.done():
        strategy.step()        # propose -> evaluate (cached) -> tell; then `on_generation(state)`
    best = strategy.best()

`Strategy` is the part every strategy has the same way, so that runs resume exactly: its settings, the space
and budget window, one seeded numpy Generator whose state is saved with the strategy's state, the generation
loop (`step` until `done`), the `on_generation(state)` hook the runner writes its files from, and the state
dict. Two families build on it: `SearchStrategy` (here: a population of genomes scored through a cache;
evolution, random, uniform, depth) and `levels.LevelSearch` (a parent and its offspring over the levels of a
sparsity database, selected in stages; darwinlm, tyr).

A `SearchStrategy` decides *which* genomes to score next (`initial_population`, `next_population`); the base
class owns the score cache (nothing is scored twice) and the history counter. The generation in progress is
part of the state (`state.pending`: its proposed genomes), so a state saved after any scored candidate resumes
exactly; a strategy that overrides `step` should call `begin_generation` for its genomes and clear
`state.pending` before `tell`, or it resumes by generation only. Reusable operators (budget repair, importance
anchors, fresh draws) live in `operators` and are held, not inherited. Pure Python + numpy: no torch or
transformers.

Scoring goes through `score_batch(genomes)` (all of a pass's new genomes at once), which the runner backs
with `tracenas.runtime.distributed.map_ranks`: under `torchrun` the genomes are split over the ranks and every rank
gets every score in order, so a strategy that scores through `evaluate` or `score_batch` is distributed for
free and its state stays identical on all ranks.

One that keeps more state extends `state_dict` / `load_state_dict` with keys of its own. Register a strategy
with `tracenas.search.registry.register_strategy` to make it a `--strategy` choice.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import TYPE_CHECKING, Callable, Generic, Protocol, TypeVar

import numpy as np

from tracenas.arch import Genome, SearchSpace
from tracenas.runtime.errors import TracenasError
from tracenas.search.strategies.operators import BudgetRepair, FreshDraws, Prior, Space
from tracenas.search.strategies.state import NEG_INF, Candidate, EvolutionConfig, EvolutionState

if TYPE_CHECKING:
    from tracenas.search.config import SearchConfig

ScoreFn = Callable[[Genome], tuple[float, dict]]  # genome -> (score, info: loss, rho_attn, seconds, ...)
# genomes -> their (score, info) in order, yielded as they become known (tracenas.runtime.distributed.map_ranks
# spreads them over the ranks of a torchrun job; one process yields each as soon as it is scored)
BatchScoreFn = Callable[[list[Genome]], Iterable[tuple[float, dict]]]


class StrategyConfig(Protocol):
    """What `Strategy` reads from a strategy's settings."""

    @property
    def seed(self) -> int: ...
    @property
    def budget_tolerance(self) -> float: ...
    @property
    def total_generations(self) -> int: ...


class StrategyState(Protocol):
    """What `Strategy` reads from a strategy's state (`search/state.json`)."""

    generation: int  # generations completed
    history_len: int  # candidates scored (history records)
    rng_state: dict | None

    def to_dict(self) -> dict: ...


ConfigT = TypeVar("ConfigT", bound=StrategyConfig)
StateT = TypeVar("StateT", bound=StrategyState)


class Strategy(ABC, Generic[ConfigT, StateT]):
    """Settings, budget window, seeded RNG, the generation loop and the state dict; the hook
    `on_generation(state)` runs after every generation. A strategy says how it steps, what its state is
    and which candidate is best."""

    def __init__(self, cfg: ConfigT, space: Space, budget: int) -> None:
        self.cfg, self.space, self.budget = cfg, space, budget
        self.rng = np.random.default_rng(cfg.seed)
        self.repair = BudgetRepair(space, budget, cfg.budget_tolerance)
        self.state: StateT = self.initial_state()
        self.on_generation: Callable[[StateT], None] | None = None

    @classmethod
    @abstractmethod
    def config_from(cls, search: SearchConfig) -> ConfigT:
        """This strategy's settings from the `tracenas search` options (resolved)."""

    @classmethod
    def check_options(cls, search: SearchConfig) -> None:
        """Refuse `tracenas search` options this strategy cannot run with (`SearchConfig` calls it when it is
        built, before presets fill the options left out); by default, none."""

    @classmethod
    @abstractmethod
    def for_plan(cls, search: SearchConfig, space: SearchSpace, budget: int) -> Strategy:
        """An instance that only counts (`--dry-run`): it is never stepped."""

    @classmethod
    def cost_lines(cls, cost: dict) -> list[str]:
        """Report lines for what this strategy's search cost beyond scoring candidates (`arch.json`'s
        `search_cost`: training, supernets, ...); none by default."""
        return []

    @abstractmethod
    def initial_state(self) -> StateT:
        """The state before the first generation (with the RNG state)."""

    @abstractmethod
    def step(self) -> None:
        """Run one generation, then call `on_generation(state)`."""

    @abstractmethod
    def best(self) -> Candidate | None:
        """The search's result so far."""

    @abstractmethod
    def planned_candidates(self) -> int:
        """How many candidates a whole run scores at most (for the progress bar)."""

    def plan_note(self) -> str | None:
        """The strategy's own account of a run's cost (what `--dry-run` prints), if any."""
        return None

    @property
    def generations(self) -> int:
        return self.cfg.total_generations

    @property
    def window(self) -> tuple[int, int]:
        return self.repair.window

    def done(self) -> bool:
        return self.state.generation >= self.generations

    def run(self) -> Candidate | None:
        while not self.done():
            self.step()
        return self.best()

    def state_dict(self) -> dict:
        """JSON-able state (the `search/state.json` format), RNG included."""
        return self.state.to_dict()

    def load_state_dict(self, d: dict) -> None:
        self.state = self.state_from_dict(d)
        self.rng.bit_generator.state = self.state.rng_state

    @abstractmethod
    def state_from_dict(self, d: dict) -> StateT:
        """The state saved as `d` (what `state_dict` returned)."""


class SearchStrategy(Strategy[EvolutionConfig, EvolutionState]):
    """A population search: runs generations of genomes scored through a cache; `on_scored(candidate,
    generation, info)` and `on_generation(state)` are hooks."""

    def __init__(self, cfg: EvolutionConfig, space: Space, budget: int, score: ScoreFn,
                 prior: Prior | None = None, score_batch: BatchScoreFn | None = None) -> None:
        self.score_fn = score
        # how `evaluate` scores the genomes it has not seen: by default one after another through `score`
        self.score_batch: BatchScoreFn = score_batch or (lambda genomes: map(score, genomes))
        self.prior = prior
        super().__init__(cfg, space, budget)
        self.draws = FreshDraws(self.repair, cfg.max_tries)
        self.on_scored: Callable[[Candidate, int, dict], None] | None = None

    @classmethod
    def config_from(cls, search: SearchConfig) -> EvolutionConfig:
        """This strategy's settings from the `tracenas search` options (resolved)."""
        return EvolutionConfig(population=search.population, elites=search.elites, iterations=search.iterations,
                               crossover=search.crossover, mutation_depth=search.mutation_depth,
                               mutation_width=search.mutation_width, jitter_sigma=search.jitter_sigma,
                               budget_tolerance=search.budget_tolerance, seed=search.seed,
                               prior_powers=search.prior_power_list(), init_depth_flips=search.init_depth_flips)

    @classmethod
    def check_options(cls, search: SearchConfig) -> None:
        elites, population = search.preset_value("elites"), search.preset_value("population")
        if elites >= population:
            raise TracenasError(f"--elites ({elites}) must be smaller than --population ({population}): "
                                "every generation needs room for new candidates")

    @classmethod
    def for_plan(cls, search: SearchConfig, space: SearchSpace, budget: int) -> SearchStrategy:
        return cls(cls.config_from(search), space, budget, lambda g: (0.0, {}))  # never called: counts only

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

    # --- what every population strategy does the same way -----------------------------------------
    def initial_state(self) -> EvolutionState:
        return EvolutionState(rng_state=self.rng.bit_generator.state)

    def state_from_dict(self, d: dict) -> EvolutionState:
        return EvolutionState.from_dict(d)

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

    def best(self) -> Candidate | None:
        """Best finite-scored in-budget genome ever scored (elites are carried, so it is in the population)."""
        return self.state.best()
