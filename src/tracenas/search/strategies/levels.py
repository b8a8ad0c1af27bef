"""Level-based search (`darwinlm`, `tyr` and the next one): a parent and its offspring over the levels of a
sparsity database, selected in stages.

    search = DarwinLMSearch(DarwinLMConfig(...), LevelSpace(space, attn_units, mlp_widths), budget, evaluate)
    search.run()            # evaluate(levels_list, StageTask) -> [(fitness, info), ...]; higher is better

What the level-based strategies share, written once here:

* `LevelSpace`: the levels of a database over a `SearchSpace` (one table for every block, or each block's
  own), with the exact cost and validity of a `Levels`;
* the operators: `uniform_start` (the parent of generation 0: uniform at the budget), `mutate` (level-switch
  mutation) and `select_best`;
* `LevelConfig`: offspring, survivors and scoring tokens per stage, mutation flips, tolerance, seed;
* `LevelState` (`search/state.json`): the parent and its fitness, the generation in progress
  (`PendingGeneration`: offspring, stage, who is still in and their fitness), cost counters and the keys every
  strategy's state has (resume, `is_done`, the plots read them);
* `LevelSearch`: (1+λ) evolution with multistep selection. Each generation draws `offspring` distinct children
  of the parent by level-switch mutation, redrawing those outside the budget window. Before stage `s` every
  survivor is scored on the stage's `StageTask` (`eval_tokens[s]` tokens; darwinlm fine-tunes it first) and the
  best `survivors[s]` are kept; the parent re-enters the last stage, whose best is the next parent. The state is
  saved after every stage through `on_stage`, so a run killed mid-stage redoes that stage only.

Which calibration / training sequences a stage uses is a function of (seed, generation, stage)
(`stage_sequences`), so every candidate of a stage sees the same tokens, a resumed run the same as an
uninterrupted one, and a rank the same as one process. A strategy on this base gives its config and state
classes, `config_from` and, if generation 0 does not start uniform, `parent`. Pure Python + numpy.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, ClassVar, TypeVar

import numpy as np

from tracenas.arch import Genome, Levels, LevelTables, PerBlock, SearchSpace, Table
from tracenas.runtime.config import json_float
from tracenas.runtime.errors import TracenasError
from tracenas.search.strategies.base import Strategy
from tracenas.search.strategies.state import NEG_INF, Candidate

if TYPE_CHECKING:
    from tracenas.search.config import SearchConfig


# --- stages ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StageTask:
    """What one selection stage asks of every candidate it scores."""

    generation: int
    stage: int
    eval_tokens: int
    train_tokens: int  # fine-tuning before scoring (0: none)
    lr: float
    seed: int


def stage_sequences(task: StageTask, pool: int, seq_len: int, tokens: int, salt: int) -> list[int]:
    """Distinct sequence indices of a pool of `pool` windows covering `tokens` tokens (the last one may be cut
    by the caller), drawn from a generator seeded by (seed, generation, stage, salt): 0 = scoring, 1 = training."""
    need = math.ceil(tokens / seq_len)
    if need > pool:
        raise TracenasError(f"a stage needs {tokens:,} tokens = {need} windows of {seq_len} but the pool holds "
                            f"{pool}: use more --num-sequences, a longer --seq-len or fewer stage tokens")
    rng = np.random.default_rng([task.seed, task.generation, task.stage, salt])
    return [int(i) for i in rng.choice(pool, size=need, replace=False)]


def select_best(fitness: list[float], keep: int) -> list[int]:
    """Indices of the `keep` highest fitnesses (ties: the earlier index), in that order."""
    return sorted(range(len(fitness)), key=lambda i: (-fitness[i], i))[:keep]


# --- the levels -----------------------------------------------------------------------------------------
class LevelSpace(LevelTables):
    """The levels of a database over a `SearchSpace`: exact cost and validity of a `Levels`.

    `attn_units` / `mlp_widths` are one table for every block (a sparsity database) or, with `per_block`,
    each block's own tables (a Týr supernet round): `per_block[i] = (attention units, MLP widths)`."""

    def __init__(self, space: SearchSpace, attn_units: Table = (), mlp_widths: Table = (),
                 per_block: PerBlock | None = None) -> None:
        self.space, self.attn_units, self.mlp_widths = space, tuple(attn_units), tuple(mlp_widths)
        self.n = space.shape.num_layers
        self.per_block = per_block

    def top_of(self, layer: int, kind: str) -> int:
        """The last level index of one sub-block (its most compressed level)."""
        return len(self.table(layer, kind)) - 1

    def genome(self, levels: Levels) -> Genome:
        return self.to_genome(levels, self.space)

    def cost(self, levels: Levels) -> int:
        return self.space.cost(self.genome(levels))

    def valid(self, levels: Levels) -> bool:
        """Every level in range and at least `min_layers` blocks left."""
        if len(levels.attn) != self.n or len(levels.mlp) != self.n:
            return False
        if any(not 0 <= k <= self.top_of(i, "attn") for i, k in enumerate(levels.attn)):
            return False
        if any(not 0 <= k <= self.top_of(i, "mlp") for i, k in enumerate(levels.mlp)):
            return False
        return sum(self.genome(levels).keep) >= self.space.min_layers


def uniform_start(ls: LevelSpace, window: tuple[int, int]) -> Levels:
    """The parent of generation 0: the largest uniform retention whose cost is within the budget (the same
    retention for attention and MLP, each snapped to its nearest level), then grown one sub-block at a time,
    one level, alternating MLP and attention from the first block, until the cost enters the window."""
    lo, hi = window
    fa = [u / ls.attn_units[0] for u in ls.attn_units]
    fm = [w / ls.mlp_widths[0] for w in ls.mlp_widths]
    start = None
    for r in sorted(set(fa) | set(fm), reverse=True):
        a = min(range(len(fa)), key=lambda k: (abs(fa[k] - r), k))
        m = min(range(len(fm)), key=lambda k: (abs(fm[k] - r), k))
        levels = Levels((a,) * ls.n, (m,) * ls.n)
        if ls.valid(levels) and ls.cost(levels) <= hi:
            start = levels
            break
    if start is None:
        raise TracenasError("no uniform level assignment fits the budget: raise --budget or --min-layers")
    attn, mlp = list(start.attn), list(start.mlp)
    moved = True
    while ls.cost(Levels(tuple(attn), tuple(mlp))) < lo and moved:
        moved = False
        for i in range(ls.n):
            for seq in (mlp, attn):
                if seq[i] == 0:
                    continue
                seq[i] -= 1
                levels = Levels(tuple(attn), tuple(mlp))
                if ls.cost(levels) <= hi and ls.valid(levels):
                    moved = True
                    if ls.cost(levels) >= lo:
                        return levels
                else:
                    seq[i] += 1
    levels = Levels(tuple(attn), tuple(mlp))
    if not lo <= ls.cost(levels) <= hi:
        raise TracenasError(f"no level assignment near uniform lands in the budget window [{lo:,}, {hi:,}]: "
                            "widen --budget-tolerance or build the database with more levels")
    return levels


def mutate(parent: Levels, ls: LevelSpace, rng: np.random.Generator, max_flips: int = 3) -> Levels:
    """Level-switch mutation: min(randint(1,max_flips), randint(1,max_flips)) flips (3 in DarwinLM, 4 in Týr);
    each picks a sub-block type (attention or MLP, weighted by its count: equal here), moves one sub-block of
    that type that is not removed one level up (more compression) and another (or the same) one that is not
    full one level down. May leave the budget window when level sizes differ; `LevelSearch.offspring` redraws
    those."""
    levels = {"attn": list(parent.attn), "mlp": list(parent.mlp)}
    flips = min(int(rng.integers(1, max_flips + 1)), int(rng.integers(1, max_flips + 1)))
    for _ in range(flips):
        kind = "attn" if rng.integers(0, 2) == 0 else "mlp"
        seq = levels[kind]
        up = [i for i, k in enumerate(seq) if k < ls.top_of(i, kind)]
        down = [i for i, k in enumerate(seq) if k > 0]
        if not up or not down:
            continue
        i = up[int(rng.integers(0, len(up)))]
        j = down[int(rng.integers(0, len(down)))]
        seq[i] += 1
        seq[j] -= 1
    return Levels(tuple(levels["attn"]), tuple(levels["mlp"]))


# --- settings and state ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class LevelConfig(ABC):
    """The settings every level-based search has; a strategy adds its own (and its defaults)."""

    offspring: int  # children per generation (λ)
    survivors: tuple[int, ...]  # kept after each stage
    eval_tokens: tuple[int, ...]  # tokens each stage scores a candidate on
    max_flips: int = 3  # mutation: min(randint(1, max_flips), randint(1, max_flips)) level switches
    budget_tolerance: float = 0.02
    seed: int = 0
    max_tries: int = 2000  # mutation draws per offspring before giving up

    @property
    @abstractmethod
    def total_generations(self) -> int:
        """Generations of a whole run (what `state.generation` counts up to)."""

    @property
    def stages(self) -> int:
        return len(self.survivors)

    @property
    def kl_topk(self) -> int:
        """Tokens of the top-k ("sparse") KL the fitness is measured with; 0 = the exact KL."""
        return 0

    def task(self, generation: int, stage: int) -> StageTask:
        """What stage `stage` of `generation` asks of its candidates (by default: scoring, no training)."""
        return StageTask(generation, stage, self.eval_tokens[stage], 0, 0.0, self.seed)

    def evaluations_per_stage(self) -> list[int]:
        """Fitness evaluations of each stage of one generation (the parent re-enters the last stage)."""
        alive = [self.offspring] + list(self.survivors[:-1])
        alive[-1] += 1
        return alive

    def run_tokens(self, per_stage: tuple[int, ...]) -> int:
        """Tokens a whole run spends when every evaluation of stage `s` takes `per_stage[s]` tokens."""
        return self.total_generations * sum(n * t for n, t in zip(self.evaluations_per_stage(), per_stage))

    def _check_budget_tolerance(self) -> None:
        if not 0 < self.budget_tolerance < 1:
            raise TracenasError("--budget-tolerance must be in (0, 1)")


@dataclass
class PendingGeneration:
    """The generation in progress: its offspring, the next stage, who is still in the selection (indices of
    `offspring`; -1 = the parent) and their fitness at the last stage scored."""

    offspring: list[Levels]
    stage: int
    alive: list[int]
    fitness: list[float]

    def to_dict(self) -> dict:
        return {"offspring": [o.to_dict() for o in self.offspring], "stage": self.stage, "alive": list(self.alive),
                "fitness": [json_float(f) for f in self.fitness]}

    @classmethod
    def from_dict(cls, d: dict) -> PendingGeneration:
        return cls([Levels.from_dict(o) for o in d["offspring"]], int(d["stage"]), [int(i) for i in d["alive"]],
                   [float(f) for f in d["fitness"]])


def _new_cost() -> dict:
    return {"evaluations": 0, "finetune_tokens": 0, "eval_tokens": 0, "finetune_steps": 0, "candidate_seconds": 0.0}


LevelStateT = TypeVar("LevelStateT", bound="LevelState")


@dataclass
class LevelState:
    """`search/state.json` of a level-based search, tagged with the strategy's `name`. `generation`,
    `history_len`, `pending` and the per-generation lists keep the keys every strategy's state has."""

    name: ClassVar[str] = ""  # the "strategy" key: a state of another strategy is refused
    generation: int = 0
    parent: Levels | None = None
    parent_fitness: float = NEG_INF
    rng_state: dict | None = None
    history_len: int = 0
    rejected: int = 0
    best_per_generation: list[float] = field(default_factory=list)
    mean_per_generation: list[float] = field(default_factory=list)
    pending: PendingGeneration | None = None
    cost: dict = field(default_factory=_new_cost)

    def to_dict(self) -> dict:
        d = {"strategy": self.name, "generation": self.generation,
             "parent": None if self.parent is None else self.parent.to_dict(),
             "parent_fitness": json_float(self.parent_fitness), "rng_state": self.rng_state,
             "history_len": self.history_len, "rejected": self.rejected,
             "best_per_generation": [json_float(x) for x in self.best_per_generation],
             "mean_per_generation": [json_float(x) for x in self.mean_per_generation], "cost": dict(self.cost)}
        if self.pending is not None:
            d["pending"] = self.pending.to_dict()
        return d

    @classmethod
    def from_dict(cls: type[LevelStateT], d: dict) -> LevelStateT:
        if d.get("strategy") != cls.name:
            raise TracenasError(f"the saved search state is not a {cls.name} search")
        return cls(**cls.fields_from(d))

    @classmethod
    def fields_from(cls, d: dict) -> dict:
        """The dataclass fields of the saved state `d` (a state with more fields adds its own)."""
        p = d.get("pending")
        return dict(generation=int(d["generation"]),
                    parent=None if d["parent"] is None else Levels.from_dict(d["parent"]),
                    parent_fitness=float(d["parent_fitness"]), rng_state=d["rng_state"],
                    history_len=int(d["history_len"]), rejected=int(d.get("rejected", 0)),
                    best_per_generation=[float(x) for x in d["best_per_generation"]],
                    mean_per_generation=[float(x) for x in d["mean_per_generation"]],
                    pending=None if p is None else PendingGeneration.from_dict(p), cost=dict(d["cost"]))


# --- the search -----------------------------------------------------------------------------------------
EvaluateFn = Callable[[list[Levels], StageTask], list[tuple[float, dict]]]
LevelConfigT = TypeVar("LevelConfigT", bound=LevelConfig)


class LevelSearch(Strategy[LevelConfigT, LevelStateT]):
    """(1+λ) evolution over `self.levels` with multistep selection. Hooks: `on_evaluated(levels, role, task,
    fitness, info)` after each fitness evaluation, `on_stage(state)` after each stage but the last,
    `on_generation(state)` after each generation."""

    state_class: type[LevelStateT]
    proxy_note = ""  # appended to the refusal of another --proxy

    def __init__(self, cfg: LevelConfigT, levels: LevelSpace, budget: int, evaluate: EvaluateFn) -> None:
        self.levels = levels
        self.evaluate_fn = evaluate
        self.on_evaluated: Callable[[Levels, str, StageTask, float, dict], None] | None = None
        self.on_stage: Callable[[LevelStateT], None] | None = None
        super().__init__(cfg, levels.space, budget)

    @classmethod
    def check_options(cls, search: SearchConfig) -> None:
        if search.proxy not in (None, "kl"):
            raise TracenasError(f"--strategy {search.strategy} scores by KL to the dense model: leave --proxy out "
                                "or use kl" + cls.proxy_note)

    def initial_state(self) -> LevelStateT:
        return self.state_class(rng_state=self.rng.bit_generator.state)

    def state_from_dict(self, d: dict) -> LevelStateT:
        return self.state_class.from_dict(d)

    def planned_candidates(self) -> int:
        """Fitness evaluations of a whole run: every stage scores its survivors, the last one the parent too."""
        return self.cfg.total_generations * sum(self.cfg.evaluations_per_stage())

    def generation_label(self) -> str:
        """Where the search is, for the log line after each generation."""
        return f"generation {self.state.generation}/{self.generations}"

    # --- proposals -------------------------------------------------------------------------------
    def parent(self) -> Levels:
        if self.state.parent is None:
            self.state.parent = uniform_start(self.levels, self.window)
        return self.state.parent

    def offspring(self) -> list[Levels]:
        """`cfg.offspring` distinct children of the parent, each valid and in the budget window."""
        parent, (lo, hi) = self.parent(), self.window
        out: list[Levels] = []
        tries = 0
        while len(out) < self.cfg.offspring:
            child = mutate(parent, self.levels, self.rng, self.cfg.max_flips)
            tries += 1
            ok = child != parent and child not in out and self.levels.valid(child)
            if ok and lo <= self.levels.cost(child) <= hi:
                out.append(child)
                tries = 0
                continue
            self.state.rejected += 1
            if tries >= self.cfg.max_tries:
                raise TracenasError(f"{tries} mutations in a row left the budget window or repeated a child: "
                                    "widen --budget-tolerance or ask for fewer --offspring")
        return out

    # --- one generation ----------------------------------------------------------------------------
    def task(self, stage: int) -> StageTask:
        return self.cfg.task(self.state.generation, stage)

    def step(self) -> None:
        """One generation: offspring of the parent (or the saved generation in progress), its stages in turn."""
        state = self.state
        parent = self.parent()
        if state.pending is None:
            kids = self.offspring()
            state.pending = PendingGeneration(kids, 0, list(range(len(kids))), [])
            state.rng_state = self.rng.bit_generator.state
        while state.pending.stage < self.cfg.stages:
            self._run_stage(parent, state.pending)
        state.pending = None
        state.generation += 1
        state.rng_state = self.rng.bit_generator.state
        if self.on_generation:
            self.on_generation(state)

    def _run_stage(self, parent: Levels, p: PendingGeneration) -> None:
        """Score who is still in at stage `p.stage` (at the last stage, the parent too) and keep the best; after
        the last stage the best is the next parent."""
        cfg, state, s = self.cfg, self.state, p.stage
        alive = list(p.alive) + ([-1] if s == cfg.stages - 1 else [])
        batch = [parent if i < 0 else p.offspring[i] for i in alive]
        task = self.task(s)
        results = self.evaluate_fn(batch, task)
        fitness = []
        for i, levels, (value, info) in zip(alive, batch, results):
            fitness.append(float(value))
            self._count(task, info)
            state.history_len += 1
            if self.on_evaluated:
                self.on_evaluated(levels, "parent" if i < 0 else "offspring", task, float(value), info)
        kept = select_best(fitness, cfg.survivors[s])
        p.stage, p.alive, p.fitness = s + 1, [alive[k] for k in kept], [fitness[k] for k in kept]
        if p.stage < cfg.stages:
            if self.on_stage:
                self.on_stage(state)
            return
        finite = [f for f in fitness if f > NEG_INF]
        winner = p.alive[0]
        state.parent = parent if winner < 0 else p.offspring[winner]
        state.parent_fitness = p.fitness[0]
        state.best_per_generation.append(state.parent_fitness)
        state.mean_per_generation.append(float(np.mean(finite)) if finite else NEG_INF)

    def _count(self, task: StageTask, info: dict) -> None:
        c = self.state.cost
        c["evaluations"] += 1
        c["finetune_tokens"] += int(info.get("finetune_tokens", 0))
        c["finetune_steps"] += int(info.get("finetune_steps", 0))
        c["eval_tokens"] += int(info.get("eval_tokens", task.eval_tokens))
        c["candidate_seconds"] = round(c["candidate_seconds"] + float(info.get("seconds", 0.0)), 4)

    def best(self) -> Candidate | None:
        """The parent after the last generation (the structure that survived), with its last fitness."""
        if self.state.generation == 0 or self.state.parent is None:
            return None
        genome = self.levels.genome(self.state.parent)
        return Candidate(genome, self.state.parent_fitness, self.levels.space.params(genome))


__all__ = ["EvaluateFn", "LevelConfig", "LevelSearch", "LevelSpace", "LevelState", "PendingGeneration", "StageTask",
           "mutate", "select_best", "stage_sequences", "uniform_start"]
