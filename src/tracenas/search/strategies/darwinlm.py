"""`--strategy darwinlm`: DarwinLM's training-aware (1+λ) evolution over the levels of a sparsity database.

    search = DarwinLMSearch(DarwinLMConfig(...), LevelSpace(space, db.attn_units, db.mlp_widths), budget, evaluate)
    search.run()            # evaluate(levels_list, StageTask) -> [(fitness, info), ...]; fitness = -KL, higher is better

A candidate is one level per sub-block (`tracenas.arch.Levels`). The search is `levels.LevelSearch`: the parent
starts uniform at the budget (`uniform_start`); each generation draws `offspring` distinct children by
level-switch mutation (`mutate`: min(randint(1,3), randint(1,3)) flips, each moving one sub-block one level up
and another of the same type one level down). Selection runs in stages: before stage `s` every survivor is
fine-tuned on `train_tokens[s]` tokens and scored on `eval_tokens[s]` tokens (the torch side,
`search.recipes.darwinlm_eval`), and the best `survivors[s]` are kept; the parent re-enters the last stage,
whose single survivor is the next parent. Which calibration / training sequences a stage uses is a function
of (seed, generation, stage) (`stage_sequences`).

The state (`search/state.json`) is saved after every stage through `on_stage`; a run killed mid-stage redoes
that stage only. Pure Python + numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from tracenas.arch import SearchSpace, default_level_tables
from tracenas.runtime.errors import TracenasError
from tracenas.search.strategies.levels import LevelConfig, LevelSearch, LevelSpace, LevelState, StageTask

if TYPE_CHECKING:
    from tracenas.search.config import SearchConfig


@dataclass(frozen=True)
class DarwinLMConfig(LevelConfig):
    offspring: int = 16
    survivors: tuple[int, ...] = (8, 4, 2, 1)
    eval_tokens: tuple[int, ...] = (1024, 2048, 4096, 8192)
    train_tokens: tuple[int, ...] = (10_000, 50_000, 100_000, 200_000)  # fine-tuning before each stage's scoring
    iterations: int = 200  # generations
    finetune_lr: float = 1e-5

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
        self._check_budget_tolerance()
        if self.finetune_lr < 0:
            raise TracenasError("--finetune-lr must be >= 0")

    @property
    def total_generations(self) -> int:
        return self.iterations

    def task(self, generation: int, stage: int) -> StageTask:
        """Stage `stage` fine-tunes every candidate on `train_tokens[stage]` tokens, then scores it."""
        return StageTask(generation, stage, self.eval_tokens[stage], self.train_tokens[stage], self.finetune_lr,
                         self.seed)


class DarwinState(LevelState):
    """`search/state.json` of a darwinlm search (`LevelState`)."""

    name = "darwinlm"


class DarwinLMSearch(LevelSearch[DarwinLMConfig, DarwinState]):
    """(1+λ) evolution with multistep, training-aware selection (the hooks of `LevelSearch`)."""

    recipe = "tracenas.search.recipes.darwinlm:DarwinLMRecipe"  # the run's torch side (see search.runner.recipe_class)
    state_class = DarwinState

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

    @classmethod
    def config_from(cls, search: SearchConfig) -> DarwinLMConfig:
        from tracenas.search.config import int_list as ints

        return DarwinLMConfig(offspring=search.offspring, survivors=ints(search.survivors),
                              eval_tokens=ints(search.stage_tokens), train_tokens=ints(search.finetune_tokens),
                              iterations=search.iterations, finetune_lr=search.finetune_lr,
                              budget_tolerance=search.budget_tolerance, seed=search.seed)

    @classmethod
    def check_options(cls, search: SearchConfig) -> None:
        super().check_options(search)
        if search.finetune_lr is not None and search.finetune_lr < 0:
            raise TracenasError(f"--finetune-lr must be >= 0, got {search.finetune_lr}")
        search.check_positive("offspring")
        search.check_int_lists("survivors", "stage_tokens", "finetune_tokens")
        if search.database_levels < 2:
            raise TracenasError(f"--database-levels must be at least 2, got {search.database_levels}")

    @classmethod
    def for_plan(cls, search: SearchConfig, space: SearchSpace, budget: int) -> DarwinLMSearch:
        """An instance for `--dry-run` counts: the default database levels, no evaluation."""
        levels = LevelSpace(space, *default_level_tables(space, search.database_levels))
        return cls(cls.config_from(search), levels, budget, lambda batch, task: [])

    def plan_note(self) -> str:
        """The whole run's training and scoring tokens (what `--dry-run` prints; fine-tuning rounds up to windows)."""
        c = self.cfg
        return (f"cost of the run: {c.iterations} generations x {sum(c.evaluations_per_stage())} fitness "
                f"evaluations; fine-tuning {c.run_tokens(c.train_tokens):,} tokens (forward + backward + AdamW on "
                f"the sliced candidate), scoring {c.run_tokens(c.eval_tokens):,} tokens (forward), plus building "
                "the sparsity database once")


__all__ = ["DarwinLMConfig", "DarwinLMSearch", "DarwinState"]
