"""`--strategy darwinlm`: DarwinLM's training-aware (1+λ) evolution over the levels of a sparsity database.

    search = DarwinLMSearch(DarwinLMConfig(...), LevelSpace(space, db.attn_units, db.mlp_widths), budget, evaluate)
    search.run()            # evaluate(levels_list, StageTask) -> [(fitness, info), ...]; fitness = -KL, higher is better

A candidate is one level per sub-block (`tracenas.arch.Levels`). The parent starts uniform at the budget
(`uniform_start`); each generation draws `offspring` distinct children by level-switch mutation
(`mutate`: min(randint(1,3), randint(1,3)) flips, each moving one sub-block one level up and another of the
same type one level down). Selection runs in stages: before stage `s` every survivor is fine-tuned on
`train_tokens[s]` tokens and scored on `eval_tokens[s]` tokens (the torch side, `search.darwinlm_eval`), and
the best `survivors[s]` are kept; the parent re-enters the last stage, whose single survivor is the next
parent. Which calibration / training sequences a stage uses is a function of (seed, generation, stage)
(`stage_sequences`), so every candidate of a stage sees the same tokens, a resumed run the same as an
uninterrupted one, and a rank the same as one process.

The state (`search/state.json`) is saved after every stage through `on_stage`; a run killed mid-stage redoes
that stage only. Pure Python + numpy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import numpy as np

from tracenas.arch import Genome, Levels, SearchSpace
from tracenas.runtime.errors import TracenasError
from tracenas.search.strategies.state import NEG_INF, Candidate, _from_json_float, _json_float
from tracenas.search.strategies.base import SearchStrategy

if TYPE_CHECKING:
    from tracenas.search.config import SearchConfig


@dataclass(frozen=True)
class DarwinLMConfig:
    offspring: int = 16
    survivors: tuple[int, ...] = (8, 4, 2, 1)
    eval_tokens: tuple[int, ...] = (1024, 2048, 4096, 8192)
    train_tokens: tuple[int, ...] = (10_000, 50_000, 100_000, 200_000)
    iterations: int = 200  # generations
    finetune_lr: float = 1e-5
    budget_tolerance: float = 0.02
    seed: int = 0
    max_tries: int = 2000  # mutation draws per offspring before giving up

    def __post_init__(self) -> None:
        s = self.survivors
        if not (len(s) == len(self.eval_tokens) == len(self.train_tokens)) or not s:
            raise TracenasError("--survivors, --stage-tokens and --finetune-tokens need one value per stage "
                                f"(got {len(s)}, {len(self.eval_tokens)} and {len(self.train_tokens)})")
        if s[-1] != 1 or any(b >= a for a, b in zip(s, s[1:])) or s[0] > self.offspring:
            raise TracenasError(f"--survivors must fall strictly to 1 and start at most at --offspring "
                                f"({self.offspring}), got {list(s)}")
        if self.offspring < 1 or self.iterations < 1:
            raise TracenasError("--offspring and --iterations must be at least 1")
        if any(t < 2 for t in self.eval_tokens) or any(t < 0 for t in self.train_tokens):
            raise TracenasError("--stage-tokens must be >= 2 and --finetune-tokens >= 0")
        if not 0 < self.budget_tolerance < 1:
            raise TracenasError("--budget-tolerance must be in (0, 1)")
        if self.finetune_lr < 0:
            raise TracenasError("--finetune-lr must be >= 0")

    @property
    def stages(self) -> int:
        return len(self.survivors)


@dataclass(frozen=True)
class StageTask:
    """What one selection stage asks of every candidate it scores."""

    generation: int
    stage: int
    eval_tokens: int
    train_tokens: int
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


Table = tuple[int, ...]


class LevelSpace:
    """The levels of a database over a `SearchSpace`: exact cost and validity of a `Levels`.

    `attn_units` / `mlp_widths` are one table for every block (a sparsity database) or, with `per_block`,
    each block's own tables (a Týr supernet round): `per_block[i] = (attention units, MLP widths)`."""

    def __init__(self, space: SearchSpace, attn_units: Table = (), mlp_widths: Table = (),
                 per_block: tuple[tuple[Table, Table], ...] | None = None) -> None:
        self.space, self.attn_units, self.mlp_widths = space, tuple(attn_units), tuple(mlp_widths)
        self.n = space.shape.num_layers
        self.per_block = per_block
        if per_block is None:
            self.top = {"attn": len(self.attn_units) - 1, "mlp": len(self.mlp_widths) - 1}

    def table(self, layer: int, kind: str) -> Table:
        if self.per_block is not None:
            return self.per_block[layer][0 if kind == "attn" else 1]
        return self.attn_units if kind == "attn" else self.mlp_widths

    def top_of(self, layer: int, kind: str) -> int:
        """The last level index of one sub-block (its most compressed level)."""
        return len(self.table(layer, kind)) - 1

    def units(self, levels: Levels) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(attention units, MLP widths) per block of `levels`."""
        return (tuple(self.table(i, "attn")[k] for i, k in enumerate(levels.attn)),
                tuple(self.table(i, "mlp")[k] for i, k in enumerate(levels.mlp)))

    def genome(self, levels: Levels) -> Genome:
        if self.per_block is None:
            return levels.genome(self.attn_units, self.mlp_widths, self.space)
        attn_u, mlp_w = self.units(levels)
        attn = tuple(u / self.space.attn_units for u in attn_u)
        mlp = tuple(w / self.space.shape.intermediate_size for w in mlp_w)
        return Genome(tuple(a > 0 or m > 0 for a, m in zip(attn, mlp)), attn, mlp)

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
    """Level-switch mutation: min(randint(1,max_flips), randint(1,max_flips)) flips (3 in DarwinLM, 4 in Týr); each picks a sub-block type (attention or
    MLP, weighted by its count: equal here), moves one sub-block of that type that is not removed one level up
    (more compression) and another (or the same) one that is not full one level down. May leave the
    budget window when level sizes differ; `DarwinLMSearch.offspring` redraws those."""
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


def select_best(fitness: list[float], keep: int) -> list[int]:
    """Indices of the `keep` highest fitnesses (ties: the earlier index), in that order."""
    return sorted(range(len(fitness)), key=lambda i: (-fitness[i], i))[:keep]


@dataclass
class DarwinState:
    """`search/state.json` of a darwinlm search. `generation`, `history_len`, `pending` and the per-generation
    lists keep the keys every strategy's state has (resume, `is_done`, the plots read them)."""

    generation: int = 0
    parent: Levels | None = None
    parent_fitness: float = NEG_INF
    rng_state: dict | None = None
    history_len: int = 0
    rejected: int = 0
    best_per_generation: list[float] = field(default_factory=list)
    mean_per_generation: list[float] = field(default_factory=list)
    # the generation in progress: offspring, stages done, indices alive (-1 = the parent), last fitnesses
    pending: dict | None = None
    cost: dict = field(default_factory=lambda: {"evaluations": 0, "finetune_tokens": 0, "eval_tokens": 0,
                                                "finetune_steps": 0, "candidate_seconds": 0.0})

    def to_dict(self) -> dict:
        d = {"strategy": "darwinlm", "generation": self.generation,
             "parent": None if self.parent is None else self.parent.to_dict(),
             "parent_fitness": _json_float(self.parent_fitness), "rng_state": self.rng_state,
             "history_len": self.history_len, "rejected": self.rejected,
             "best_per_generation": [_json_float(x) for x in self.best_per_generation],
             "mean_per_generation": [_json_float(x) for x in self.mean_per_generation], "cost": dict(self.cost)}
        if self.pending is not None:
            p = self.pending
            d["pending"] = {"offspring": [o.to_dict() for o in p["offspring"]], "stage": p["stage"],
                            "alive": list(p["alive"]), "fitness": [_json_float(f) for f in p["fitness"]]}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DarwinState":
        if d.get("strategy") != "darwinlm":
            raise TracenasError("the saved search state is not a darwinlm search")
        p = d.get("pending")
        pending = None if p is None else {"offspring": [Levels.from_dict(o) for o in p["offspring"]],
                                          "stage": int(p["stage"]), "alive": [int(i) for i in p["alive"]],
                                          "fitness": [_from_json_float(f) for f in p["fitness"]]}
        return cls(generation=int(d["generation"]),
                   parent=None if d["parent"] is None else Levels.from_dict(d["parent"]),
                   parent_fitness=_from_json_float(d["parent_fitness"]), rng_state=d["rng_state"],
                   history_len=int(d["history_len"]), rejected=int(d.get("rejected", 0)),
                   best_per_generation=[float(x) for x in d["best_per_generation"]],
                   mean_per_generation=[float(x) for x in d["mean_per_generation"]], pending=pending,
                   cost=dict(d["cost"]))


EvaluateFn = Callable[[list[Levels], StageTask], list[tuple[float, dict]]]


class DarwinLMSearch(SearchStrategy):
    """(1+λ) evolution with multistep, training-aware selection. Hooks: `on_evaluated(levels, role, task,
    fitness, info)` after each fitness evaluation, `on_stage(state)` after each stage, `on_generation(state)`."""

    @classmethod
    def cost_lines(cls, cost: dict) -> list[str]:
        """A training-aware search is charged for its training too."""
        return [f"- fitness evaluations: {cost['candidate_evaluations']:,} (each fine-tunes a sliced candidate, then "
                f"scores it by KL to the base model)",
                f"- fine-tuning: {cost['finetune_tokens']:,} tokens in {cost['finetune_steps']:,} AdamW steps; "
                f"scoring: {cost['eval_tokens']:,} tokens",
                f"- search wall time over all sessions: {cost['wall_seconds']:.0f} s (candidates "
                f"{cost['candidate_seconds']:.0f} s; database built this session in "
                f"{cost['database_seconds_this_session']:.0f} s)"]

    recipe = "tracenas.search.recipes.darwinlm:DarwinLMRecipe"  # the run's torch side (see search.runner.recipe_class)
    max_flips = 3  # mutation: min(randint(1, max_flips), randint(1, max_flips)) level switches

    def __init__(self, cfg: DarwinLMConfig, levels: LevelSpace, budget: int, evaluate: EvaluateFn) -> None:
        self.levels = levels
        self.evaluate_fn = evaluate
        self.on_evaluated: Callable[[Levels, str, StageTask, float, dict], None] | None = None
        self.on_stage: Callable[[DarwinState], None] | None = None
        # the base class's per-genome score callback is unused: every stage scores through `evaluate`
        super().__init__(cfg, levels.space, budget, score=lambda g: (NEG_INF, {}))  # type: ignore[arg-type]

    @classmethod
    def config_from(cls, search: SearchConfig) -> DarwinLMConfig:  # type: ignore[override]
        from tracenas.search.config import int_list as ints

        return DarwinLMConfig(offspring=search.offspring, survivors=ints(search.survivors),
                              eval_tokens=ints(search.stage_tokens), train_tokens=ints(search.finetune_tokens),
                              iterations=search.iterations, finetune_lr=search.finetune_lr,
                              budget_tolerance=search.budget_tolerance, seed=search.seed)

    @classmethod
    def for_plan(cls, search: SearchConfig, space: SearchSpace, budget: int) -> "DarwinLMSearch":
        """An instance for `--dry-run` counts: the default database levels, no evaluation."""
        from tracenas.prune.database import DatabaseSpec

        spec = DatabaseSpec.default(space, search.database_levels)
        return cls(cls.config_from(search), LevelSpace(space, spec.attn_units, spec.mlp_widths), budget,
                   lambda batch, task: [])

    def initial_state(self) -> DarwinState:  # type: ignore[override]
        return DarwinState(rng_state=self.rng.bit_generator.state)

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
            child = mutate(parent, self.levels, self.rng, self.max_flips)
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

    def initial_population(self) -> list[Genome]:
        return [self.levels.genome(c) for c in self.offspring()]

    def next_population(self) -> list[Genome]:
        return self.initial_population()

    def planned_candidates(self) -> int:
        """Fitness evaluations of a whole run: every stage scores its survivors, the last one the parent too."""
        c = self.cfg
        per = c.offspring + sum(c.survivors[:-1]) + 1
        return c.iterations * per

    @property
    def generations(self) -> int:
        return self.cfg.iterations

    def plan_note(self) -> str:
        """The whole run's training and scoring tokens (what `--dry-run` prints; fine-tuning rounds up to windows)."""
        c = self.cfg
        alive = [c.offspring] + list(c.survivors[:-1])
        alive[-1] += 1  # the parent re-enters the last stage
        train = c.iterations * sum(n * t for n, t in zip(alive, c.train_tokens))
        score = c.iterations * sum(n * t for n, t in zip(alive, c.eval_tokens))
        return (f"cost of the run: {c.iterations} generations x {sum(alive)} fitness evaluations; fine-tuning "
                f"{train:,} tokens (forward + backward + AdamW on the sliced candidate), scoring {score:,} tokens "
                "(forward), plus building the sparsity database once")

    # --- one generation ----------------------------------------------------------------------------
    def task(self, stage: int) -> StageTask:
        c = self.cfg
        return StageTask(self.state.generation, stage, c.eval_tokens[stage], c.train_tokens[stage], c.finetune_lr,
                         c.seed)

    def step(self) -> None:
        state, cfg = self.state, self.cfg
        parent = self.parent()
        if state.pending is None:
            kids = self.offspring()
            state.pending = {"offspring": kids, "stage": 0, "alive": list(range(len(kids))), "fitness": []}
            state.rng_state = self.rng.bit_generator.state
        p = state.pending
        while p["stage"] < cfg.stages:
            s = p["stage"]
            alive = list(p["alive"]) + ([-1] if s == cfg.stages - 1 else [])
            batch = [parent if i < 0 else p["offspring"][i] for i in alive]
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
            p.update(stage=s + 1, alive=[alive[k] for k in kept], fitness=[fitness[k] for k in kept])
            if p["stage"] < cfg.stages and self.on_stage:
                self.on_stage(state)
            if p["stage"] == cfg.stages:
                finite = [f for f in fitness if f > NEG_INF]
                winner = p["alive"][0]
                state.parent = parent if winner < 0 else p["offspring"][winner]
                state.parent_fitness = p["fitness"][0]
                state.best_per_generation.append(state.parent_fitness)
                state.mean_per_generation.append(float(np.mean(finite)) if finite else NEG_INF)
        state.pending = None
        state.generation += 1
        state.rng_state = self.rng.bit_generator.state
        if self.on_generation:
            self.on_generation(state)  # type: ignore[arg-type]

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
        return Candidate(genome, self.state.parent_fitness, self.space.params(genome))

    def state_dict(self) -> dict:
        return self.state.to_dict()

    def load_state_dict(self, d: dict) -> None:
        self.state = DarwinState.from_dict(d)
        self.rng.bit_generator.state = self.state.rng_state


__all__ = ["DarwinLMConfig", "DarwinLMSearch", "DarwinState", "LevelSpace", "StageTask", "mutate", "select_best",
           "stage_sequences", "uniform_start"]
