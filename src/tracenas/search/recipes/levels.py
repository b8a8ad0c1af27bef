"""`LevelRecipe`: the `SearchRecipe` of a level-based search (`--strategy darwinlm`, `tyr`; see
`tracenas.search.strategies.levels`).

It keeps the evolution's recipe (search.yaml, resume checks, the run directory through `SearchStore`, plots,
summary) and replaces what scoring by levels changes:

* data: the calibration pool (`--num-sequences` x `--seq-len`: the KL reference and the database's
  calibration), which must hold the largest stage's tokens, and a training pool (`_train_windows`);
* scoring: a `CandidateEvaluator` (sliced candidate, in-memory fine-tuning when a stage asks for it, KL to
  the dense model) over a sparsity database (`_first_database`: darwinlm's is there before the search, a Týr
  round's comes with the round), split over ranks under torchrun (`tracenas.runtime.distributed.map_ranks`);
  rank 0 builds a database while the other ranks wait, then they open it (`_built_on_main`);
* outputs: every fitness evaluation is a history record with its generation, stage, role and tokens; the state
  is saved after every stage; arch.json records the levels, the database and the search cost, and its
  `selection` is the database's (kept heads / channels), which export applies together with the database's
  re-solved weights.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Callable

import torch

from tracenas.arch import Levels
from tracenas.prune.database import SparsityDatabase
from tracenas.prune.masking import selection_to_list
from tracenas.runtime.config import format_count, json_float
from tracenas.runtime.distributed import map_ranks
from tracenas.runtime.errors import TracenasError
from tracenas.search.recipes.darwinlm_eval import CandidateEvaluator
from tracenas.search.recipes.runner import SearchRecipe
from tracenas.search.strategies.base import StrategyState
from tracenas.search.strategies.levels import LevelConfig, LevelSearch, LevelState, StageTask
from tracenas.search.strategies.state import Candidate

log = logging.getLogger(__name__)


class LevelRecipe(SearchRecipe):
    """One level-based search run. A strategy's recipe gives `strategy_config`, `_new_strategy`,
    `_train_windows` and `_first_database`, and may add cost (`_training_cost`, `_setup_cost`) and
    arch.json keys (`_arch_extra`)."""

    strategy: LevelSearch
    rank_dirs = True  # under torchrun, offspring are split over ranks; ranks > 0 write into OUT/.ranks/rank-r
    db: SparsityDatabase | None  # the database scored from (a Týr round's supernet)
    db_path: Path  # where it is (arch.json names it)

    def strategy_config(self) -> LevelConfig:
        raise NotImplementedError

    def _new_strategy(self) -> LevelSearch:
        """The strategy, scoring through `self._evaluate`."""
        raise NotImplementedError

    def _train_windows(self) -> torch.Tensor:
        """The training pool: windows of `--seq-len` tokens (none: a search without fine-tuning)."""
        return torch.zeros(0, self.cfg.seq_len, dtype=torch.long)

    def _first_database(self) -> SparsityDatabase | None:
        """The database the evaluator starts with (None: one comes later); sets `db_path`."""
        raise NotImplementedError

    # --- setup -----------------------------------------------------------------------------------
    def _setup_data(self) -> None:
        super()._setup_data()  # the calibration pool: self.batches
        cfg = self.strategy_config()
        self.train_windows = self._train_windows()
        if max(cfg.eval_tokens) > self.batches.numel():
            raise TracenasError(f"a stage scores {max(cfg.eval_tokens):,} tokens but the calibration pool holds "
                                f"{self.batches.numel():,} ({self.cfg.num_sequences} x {self.cfg.seq_len}): raise "
                                "--num-sequences or --seq-len")

    def _setup_scorer(self) -> None:
        (self.out / "search").mkdir(parents=True, exist_ok=True)
        self.main_out = Path(self.cfg.out).expanduser()  # rank 0's run directory (the database's home)
        db = self._first_database()
        self.importance, self.probes = None, None
        self.evaluator = CandidateEvaluator(self.model, self.adapter, db, self.batches, self.train_windows,
                                            loss_chunk=self.cfg.loss_chunk, micro_batch=self.cfg.micro_batch,
                                            topk=self.strategy_config().kl_topk)

    def _built_on_main(self, build: Callable[[], SparsityDatabase]) -> SparsityDatabase:
        """Rank 0 builds (or opens) the database at `db_path` while the other ranks wait, then they open it."""
        if not self.dist.is_main:
            self.dist.barrier()
            return SparsityDatabase.open(self.db_path)
        db = build()
        self.dist.barrier()
        return db

    def _setup_strategy(self) -> None:
        self.strategy = self._new_strategy()
        self.strategy.on_evaluated = self._on_evaluated
        self.strategy.on_stage = self._on_stage
        self.strategy.on_generation = self._on_generation
        self.wall_before = 0.0

    def _evaluate(self, batch: list[Levels], task: StageTask) -> list[tuple[float, dict]]:
        rank = self.dist.rank

        def one(levels: Levels) -> tuple[float, dict]:
            fitness, info = self.evaluator.evaluate(levels, task)
            return fitness, info | {"rank": rank}

        return list(map_ranks(one, batch, self.dist))

    def _resumed(self, state: StrategyState) -> None:
        self.wall_before = float(self.strategy.state.cost.get("wall_seconds", 0.0))
        p = self.strategy.state.pending
        at = "" if p is None else f", at stage {p.stage + 1} of generation {state.generation}"
        log.info("resuming after generation %d (%d fitness evaluations%s)", state.generation, state.history_len, at)

    # --- hooks -----------------------------------------------------------------------------------
    def _on_evaluated(self, levels: Levels, role: str, task: StageTask, fitness: float, info: dict) -> None:
        state = self.strategy.state
        genome = self.strategy.levels.genome(levels)
        rec = {"index": state.history_len - 1, "generation": task.generation, "stage": task.stage, "role": role,
               "score": json_float(fitness), "kl": json_float(info.get("kl")), "eval_tokens": info.get("eval_tokens"),
               "finetune_tokens": info.get("finetune_tokens"), "finetune_steps": info.get("finetune_steps"),
               "params": self.space.params(genome), "levels": levels.to_dict(), "genome": genome.to_dict()}
        self.store.append(rec, {"index": rec["index"], "seconds": round(info.get("seconds", 0.0), 4),
                                "rank": info.get("rank", 0)})
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(gen=task.generation, stage=task.stage, fitness=f"{fitness:.4f}")

    def _wall_seconds(self) -> float:
        """Wall time of the search over all sessions."""
        return round(self.wall_before + time.perf_counter() - self.t_start, 2)

    def _save_state(self) -> None:
        self.strategy.state.cost["wall_seconds"] = self._wall_seconds()
        self.store.write_state(self.strategy.state_dict())

    def _on_stage(self, state: LevelState) -> None:
        self._save_state()

    def _on_generation(self, state: StrategyState) -> None:
        self._save_state()
        self._write_arch(self.strategy.best())
        parent, fitness = self.strategy.state.parent, self.strategy.state.parent_fitness
        params = "-" if parent is None else format_count(self.space.params(self.strategy.levels.genome(parent)))
        log.info("%s: parent fitness %.5f (KL %.5f), %s", self.strategy.generation_label(), fitness, -fitness, params)

    # --- outputs ---------------------------------------------------------------------------------
    def search_cost(self) -> dict:
        """What the search spent: fitness evaluations, fine-tuning and scoring tokens, time (all sessions)."""
        c = self.strategy.state.cost
        return ({"candidate_evaluations": c["evaluations"]} | self._training_cost(c)
                | {"eval_tokens": c["eval_tokens"], "candidate_seconds": c["candidate_seconds"],
                   "wall_seconds": self._wall_seconds()} | self._setup_cost())

    def _training_cost(self, cost: dict) -> dict:
        """The search cost of fine-tuning candidates (none by default)."""
        return {}

    def _setup_cost(self) -> dict:
        """The search cost of building what it scores from (databases, supernets)."""
        return {}

    def _summary(self, seconds: float) -> dict:
        summary = super()._summary(seconds)
        summary["calibration_tokens"] = max(self.strategy.cfg.eval_tokens)
        summary["search_cost"] = self.search_cost()
        return summary

    def _arch_extra(self) -> dict:
        """More arch.json keys (a strategy's recipe adds its own)."""
        return {}

    def _write_arch(self, best: Candidate | None) -> None:
        levels = self.strategy.state.parent
        if best is None or levels is None:
            return
        main_out = self.main_out.absolute()
        db = os.path.relpath(self.db_path.absolute(), main_out) if not self.cfg.database else str(self.db_path.absolute())
        selection = selection_to_list(self.evaluator.assembler.selection(levels))
        self._save_arch(best, "kl", selection, {"levels": levels.to_dict(), "database": db},
                        {"search_cost": self.search_cost()} | self._arch_extra())


__all__ = ["LevelRecipe"]
