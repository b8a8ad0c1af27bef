"""`--strategy tyr`: Týr-the-Pruner's iterative prune-and-search over a supernet of locally pruned sub-blocks.

    search = TyrSearch(TyrConfig(...), space, budget, evaluate)     # evaluate(levels, StageTask) -> [(fitness, info)]
    search.on_round = lambda r, level_space: ...                      # build / open round r's supernet
    search.run()

The search runs in rounds. Round `r` has a supernet: every sub-block (each block's attention and MLP) pruned
at up to `levels` (K = 9) sizes centred on that sub-block's size in the current distribution, `step_r` apart,
where the step is `initial_step` (12.5 %) of the sub-block in round 0 and halves every round (12.5 → 6.25 →
3.125 → 1.56 %), never below one unit of our grid (one query head per KV group, 32 MLP channels). Levels that
would fall below 0 or above the full size are left out (the official clipping), so a sub-block near an end
has fewer levels. Round 0 is centred on the uniform distribution at the budget; every later round on the
previous round's winner (coarse to fine). The torch side builds each round's supernet
(`on_round(round, LevelSpace)`, see `search.recipes.tyr`: a sparsity database with per-block levels and
expected-error inputs) before the round's first generation.

Within a round the search is the (1+λ) evolution of `levels.LevelSearch` without fine-tuning: the parent starts
at the centre (level index of the centre in every sub-block), each generation draws `offspring` distinct
children by level-switch mutation with min(randint(1,4), randint(1,4)) flips, and the children are selected in
stages (`survivors` kept after scoring on `eval_tokens` tokens each; the parent re-enters the last stage and
the best of that stage is the next parent). A switch moves one sub-block one level down and another of the
same type one level up; within a round every level step of a type is the same number of units, so the
parameter count only moves when a sub-block reaches size 0 (its norm goes with it): children outside the
budget window are redrawn, as in darwinlm.

`state.generation` counts generations over all rounds; round `r` holds generations
`[r * generations, (r + 1) * generations)`. The state (round, centre, parent, pending stage) is saved
after every stage, so a resumed search continues mid-round or at a round boundary exactly as an
uninterrupted one. Pure Python + numpy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from tracenas.arch import Levels, SearchSpace, Table
from tracenas.runtime.errors import TracenasError
from tracenas.search.strategies.levels import (
    EvaluateFn, LevelConfig, LevelSearch, LevelSpace, LevelState, uniform_start,
)

if TYPE_CHECKING:
    from tracenas.search.config import SearchConfig

FITNESSES = ("kl", "sparse_kl")


@dataclass(frozen=True)
class TyrConfig(LevelConfig):
    offspring: int = 128
    survivors: tuple[int, ...] = (16, 4, 2)
    eval_tokens: tuple[int, ...] = (2048, 16384, 131072)
    max_flips: int = 4
    generations: int = 50  # per round
    rounds: int = 4
    levels: int = 9  # K: sizes per sub-block in a round's supernet
    initial_step: float = 0.125  # of a sub-block, round 0; halves every round
    fitness: str = "kl"  # exact KL to the dense model, or the official top-k "sparse" KL
    topk: int = 8192

    def __post_init__(self) -> None:
        s = self.survivors
        if not s or len(s) != len(self.eval_tokens):
            raise TracenasError("--survivors and --stage-tokens need one value per stage "
                                f"(got {len(s)} and {len(self.eval_tokens)})")
        if s[0] > self.offspring or any(b > a for a, b in zip(s, s[1:])) or s[-1] < 1:
            raise TracenasError(f"--survivors must not grow, start at most at --offspring ({self.offspring}) and "
                                f"end at >= 1, got {list(s)}")
        if self.offspring < 1 or self.generations < 1 or self.rounds < 1:
            raise TracenasError("--offspring, --iterations and --rounds must be at least 1")
        if self.levels < 3 or self.levels % 2 == 0:
            raise TracenasError(f"--supernet-levels must be odd and >= 3 (centre +- steps), got {self.levels}")
        if not 0 < self.initial_step <= 0.5:
            raise TracenasError(f"--level-step must be in (0, 0.5], got {self.initial_step}")
        if any(t < 2 for t in self.eval_tokens):
            raise TracenasError("--stage-tokens must be >= 2")
        if self.fitness not in FITNESSES:
            raise TracenasError(f"--fitness must be one of {', '.join(FITNESSES)}, got {self.fitness!r}")
        if self.topk < 1 or self.max_flips < 1:
            raise TracenasError("--topk and the flips must be at least 1")
        self._check_budget_tolerance()

    @property
    def total_generations(self) -> int:
        """Generations over all rounds."""
        return self.rounds * self.generations

    @property
    def kl_topk(self) -> int:
        return self.topk if self.fitness == "sparse_kl" else 0


def step_units(full: int, fraction: float, multiple: int = 1) -> int:
    """A round's level step for a sub-block of `full` units: `fraction` of it, floored to the grid
    (`multiple`), at least one grid unit."""
    return max(multiple, math.floor(full * fraction / multiple) * multiple)


def centred_table(centre: int, full: int, step: int, levels: int) -> tuple[Table, int]:
    """The sizes of one sub-block in a round: `centre + j * step` for j in -K//2 .. K//2, those outside
    [0, full] left out; descending (level 0 = the largest). Returns (table, index of the centre)."""
    half = levels // 2
    below = min(centre // step, half)  # steps of compression possible before 0
    above = min((full - centre) // step, half)
    sizes = [centre + j * step for j in range(above, -below - 1, -1)]
    return tuple(sizes), above


def round_step(cfg: TyrConfig, rnd: int) -> float:
    return cfg.initial_step / 2 ** rnd


def round_space(space: SearchSpace, cfg: TyrConfig, rnd: int, centre_attn: tuple[int, ...],
                centre_mlp: tuple[int, ...]) -> tuple[LevelSpace, Levels]:
    """Round `rnd`'s `LevelSpace` (per-block tables centred on the centre sizes) and the centre as `Levels`."""
    frac = round_step(cfg, rnd)
    a_step = step_units(space.attn_units, frac)
    m_step = step_units(space.shape.intermediate_size, frac, space.mlp_multiple)
    per_block, attn_idx, mlp_idx = [], [], []
    for a, m in zip(centre_attn, centre_mlp):
        at, ai = centred_table(a, space.attn_units, a_step, cfg.levels)
        mt, _ = centred_table(m, space.shape.intermediate_size, m_step, cfg.levels)
        mt = tuple(w for w in mt if w in (0, space.mlp_width(w / space.shape.intermediate_size)))
        per_block.append((at, mt))
        attn_idx.append(ai)
        mlp_idx.append(mt.index(m))
    return LevelSpace(space, per_block=tuple(per_block)), Levels(tuple(attn_idx), tuple(mlp_idx))


def full_grid(space: SearchSpace) -> LevelSpace:
    """Every size of our grid as a level (attention units and MLP widths on the 32-channel grid, down to 0)."""
    attn = tuple(range(space.attn_units, -1, -1))
    full = space.shape.intermediate_size
    widths = [full] + [w for w in range(full - full % space.mlp_multiple, 0, -space.mlp_multiple) if w != full] + [0]
    return LevelSpace(space, attn, tuple(dict.fromkeys(widths)))


def uniform_centre(space: SearchSpace, window: tuple[int, int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Round 0's centre: the uniform distribution at the budget on the full grid (`levels.uniform_start`)."""
    grid = full_grid(space)
    return grid.units(uniform_start(grid, window))


@dataclass
class TyrState(LevelState):
    """`LevelState` plus the round and its centre (attention units and MLP widths per block)."""

    name = "tyr"
    centre_attn: tuple[int, ...] = ()
    centre_mlp: tuple[int, ...] = ()
    round_units: list[dict] = field(default_factory=list)  # each finished round's winner (units per block)

    @property
    def round(self) -> int:
        """The round the centre belongs to: one per finished round."""
        return len(self.round_units)

    def to_dict(self) -> dict:
        return super().to_dict() | {"round": self.round, "centre_attn": list(self.centre_attn),
                                    "centre_mlp": list(self.centre_mlp), "round_units": self.round_units}

    @classmethod
    def fields_from(cls, d: dict) -> dict:
        return super().fields_from(d) | {"centre_attn": tuple(d["centre_attn"]), "centre_mlp": tuple(d["centre_mlp"]),
                                         "round_units": list(d.get("round_units", []))}


class TyrSearch(LevelSearch[TyrConfig, TyrState]):
    """Rounds of supernet evolution. Hooks: those of `LevelSearch`, plus `on_round(round, level_space)`
    called before the first generation a session runs in a round (build or open that round's supernet)."""

    recipe = "tracenas.search.recipes.tyr:TyrRecipe"
    state_class = TyrState

    @classmethod
    def cost_lines(cls, cost: dict) -> list[str]:
        """Supernets built per round, no training."""
        return [f"- fitness evaluations: {cost['candidate_evaluations']:,} (each assembles a candidate from its "
                f"round's supernet and scores it by KL to the base model); scoring: {cost['eval_tokens']:,} tokens",
                f"- supernets: {cost['rounds']} rounds, {cost['supernet_bytes'] / 1e6:,.1f} MB on disk, built this "
                f"session in {cost['supernet_seconds_this_session']:.0f} s",
                f"- search wall time over all sessions: {cost['wall_seconds']:.0f} s (candidates "
                f"{cost['candidate_seconds']:.0f} s)"]
    proxy_note = " (--fitness sparse_kl for the top-k variant)"

    def __init__(self, cfg: TyrConfig, space: SearchSpace, budget: int, evaluate: EvaluateFn) -> None:
        self.on_round: Callable[[int, LevelSpace], None] | None = None
        self._ready_round = -1
        # no levels until a round is entered (`_enter_round`, before the round's first generation)
        super().__init__(cfg, LevelSpace(space, per_block=()), budget, evaluate)

    @classmethod
    def config_from(cls, search: SearchConfig) -> TyrConfig:
        from tracenas.search.config import int_list as ints

        return TyrConfig(offspring=search.offspring, survivors=ints(search.survivors),
                         eval_tokens=ints(search.stage_tokens), generations=search.iterations, rounds=search.rounds,
                         levels=search.supernet_levels, initial_step=search.level_step, fitness=search.fitness,
                         topk=search.topk, budget_tolerance=search.budget_tolerance, seed=search.seed)

    @classmethod
    def check_options(cls, search: SearchConfig) -> None:
        super().check_options(search)
        search.check_positive("offspring", "rounds", "supernet_levels")
        if search.level_step is not None and not 0 < search.level_step <= 0.5:
            raise TracenasError(f"--level-step must be in (0, 0.5], got {search.level_step}")
        if search.topk < 1:
            raise TracenasError(f"--topk must be at least 1, got {search.topk}")
        search.check_int_lists("survivors", "stage_tokens")

    @classmethod
    def for_plan(cls, search: SearchConfig, space: SearchSpace, budget: int) -> TyrSearch:
        return cls(cls.config_from(search), space, budget, lambda batch, task: [])

    def load_state_dict(self, d: dict) -> None:
        super().load_state_dict(d)
        self._ready_round = -1

    # --- rounds ------------------------------------------------------------------------------------
    @property
    def round(self) -> int:
        return self.state.generation // self.cfg.generations

    def round_space(self, rnd: int | None = None) -> tuple[LevelSpace, Levels]:
        state, space = self.state, self.levels.space
        if not state.centre_attn:
            state.centre_attn, state.centre_mlp = uniform_centre(space, self.window)
        return round_space(space, self.cfg, self.round if rnd is None else rnd, state.centre_attn, state.centre_mlp)

    def _enter_round(self) -> None:
        """Make `self.levels` the current round's; at a round's first generation, re-centre on the winner."""
        state, rnd = self.state, self.round
        ended = state.pending is None and state.generation == rnd * self.cfg.generations and state.round != rnd
        if ended and state.parent is not None:
            # the previous round ended: its winner becomes the centre of this one
            previous, _ = self.round_space(state.round)
            attn, mlp = previous.units(state.parent)
            state.round_units.append({"attn": list(attn), "mlp": list(mlp)})
            state.centre_attn, state.centre_mlp = attn, mlp
            state.parent = None
        if self._ready_round == rnd:
            return
        self.levels, centre = self.round_space(rnd)
        if state.parent is None:
            state.parent = centre
        if self.on_round:
            self.on_round(rnd, self.levels)
        self._ready_round = rnd

    def parent(self) -> Levels:
        """The round's parent (entering the round first: its centre at the round's first generation)."""
        self._enter_round()
        return super().parent()

    def round_winners(self) -> list[dict]:
        """Each finished round's winner as {"attn": units per block, "mlp": widths per block} (the round in
        progress included, with its parent so far)."""
        out = list(self.state.round_units)
        if self.state.parent is not None and self.state.generation > 0:
            current, _ = self.round_space(self.state.round)
            attn, mlp = current.units(self.state.parent)
            out.append({"attn": list(attn), "mlp": list(mlp)})
        return out

    def round_fitness(self) -> list[float]:
        """The parent's fitness at the end of each round (so far), on that round's last-stage tokens."""
        g, best = self.cfg.generations, self.state.best_per_generation
        return [best[min(len(best), (r + 1) * g) - 1] for r in range(math.ceil(len(best) / g))]

    def generation_label(self) -> str:
        g, done = self.cfg.generations, self.state.generation - 1
        return f"round {done // g + 1} generation {done % g + 1}/{g}"

    def plan_note(self) -> str:
        c = self.cfg
        steps = ", ".join(f"{100 * round_step(c, r):g}%" for r in range(c.rounds))
        return (f"cost of the run: {c.rounds} rounds (level steps {steps}) x {c.generations} generations x "
                f"{sum(c.evaluations_per_stage())} fitness evaluations, scoring {c.run_tokens(c.eval_tokens):,} "
                f"tokens (forward, {c.fitness}); plus one supernet per round ({c.levels} levels per sub-block, "
                "expected-error inputs)")


__all__ = ["TyrConfig", "TyrSearch", "TyrState", "centred_table", "full_grid", "round_space", "step_units",
           "uniform_centre"]
