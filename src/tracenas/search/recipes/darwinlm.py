"""`DarwinLMRecipe`: the `SearchRecipe` of `--strategy darwinlm` (see docs/darwinlm.md).

It differs from the evolution's recipe in three steps and keeps the rest (search.yaml, resume checks,
history.jsonl, search/state.json, arch.json, plots, summary):

* data: the calibration pool (`--num-sequences` x `--seq-len`, the KL reference and the database's calibration)
  and a training pool of windows of the training split (twice the largest stage's fine-tuning tokens);
* scoring: a sparsity-level database (`--database`, or built / resumed in OUT/database) and a
  `CandidateEvaluator` (sliced candidate, in-memory fine-tuning, KL to the dense model), split over ranks
  under torchrun (`tracenas.runtime.distributed.map_ranks`);
* outputs: every fitness evaluation is a history record with its generation, stage, role and tokens; the state
  is saved after every stage; arch.json records the levels, the database and the search cost, and its
  `selection` is the database's (kept heads / channels from its OBS order), which export applies together with
  the database's re-solved weights.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path


from tracenas.arch import ArchFile, Levels
from tracenas.runtime.config import format_count
from tracenas.runtime.config import atomic_write_json, atomic_write_text
from tracenas.prune.database import DatabaseSpec, SparsityDatabase, build_database, model_checksum
from tracenas.runtime.distributed import map_ranks
from tracenas.runtime.errors import TracenasError
from tracenas.prune.masking import selection_to_list
from tracenas.search.strategies.darwinlm import DarwinLMSearch, DarwinState, LevelSpace, StageTask
from tracenas.search.recipes.darwinlm_eval import CandidateEvaluator
from tracenas.search.recipes.runner import STATE, SearchRecipe, _f, _truncate_jsonl
from tracenas.search.strategies.state import Candidate

log = logging.getLogger(__name__)

DATABASE = "database"


def database_path(out: Path, spec: str | None) -> Path:
    return Path(spec).expanduser() if spec else out / DATABASE


class DarwinLMRecipe(SearchRecipe):
    """One darwinlm search run (the steps of `SearchRecipe`, three of them replaced)."""

    strategy: DarwinLMSearch
    rank_dirs = True  # under torchrun, offspring are split over ranks; ranks > 0 write into OUT/.ranks/rank-r

    def _setup_data(self) -> None:
        from tracenas import data as data_mod

        super()._setup_data()  # the calibration pool: self.batches
        cfg = self.strategy_config()
        windows = max(1, 2 * math.ceil(max(cfg.train_tokens) / self.cfg.seq_len)) if max(cfg.train_tokens) else 1
        self.train_windows = data_mod.token_batches(self.tokenizer, self.cfg.data, split="train",
                                                    num_sequences=windows, seq_len=self.cfg.seq_len)
        if max(cfg.eval_tokens) > self.batches.numel():
            raise TracenasError(f"a stage scores {max(cfg.eval_tokens):,} tokens but the calibration pool holds "
                                f"{self.batches.numel():,} ({self.cfg.num_sequences} x {self.cfg.seq_len}): raise "
                                "--num-sequences or --seq-len")

    def strategy_config(self):
        return DarwinLMSearch.config_from(self.cfg)

    def _setup_scorer(self) -> None:
        (self.out / "search").mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        self.db_path = database_path(Path(self.cfg.out).expanduser(), self.cfg.database)
        self.db = self._database()
        self.database_seconds = time.perf_counter() - t0
        self.importance, self.probes = None, None
        self.evaluator = CandidateEvaluator(self.model, self.adapter, self.db, self.batches, self.train_windows,
                                            loss_chunk=self.cfg.loss_chunk, micro_batch=self.cfg.micro_batch)

    def _database(self) -> SparsityDatabase:
        """Rank 0 builds (or resumes) the database while the other ranks wait, then they open it."""
        if not self.dist.is_main:
            self.dist.barrier()
            return SparsityDatabase.open(self.db_path)
        db = self._main_database()
        self.dist.barrier()
        return db

    def _main_database(self) -> SparsityDatabase:
        cfg = self.cfg
        if cfg.database:
            db = SparsityDatabase.open(self.db_path)
            if not db.complete:
                raise TracenasError(f"the database in {self.db_path} is incomplete: finish it with `tracenas "
                                    f"database build {self.db_path}` (same options)")
            want = db.manifest["fingerprint"]["model"]["checksum"]
            if want != model_checksum(self.model):
                raise TracenasError(f"the database in {self.db_path} was built from another model (weights "
                                    "checksum differs): pass the same --model")
            return db
        spec = DatabaseSpec.default(self.space, cfg.database_levels, sequences=cfg.database_sequences or cfg.num_sequences,
                                    seq_len=cfg.database_seq_len or cfg.seq_len,
                                    data=cfg.data, micro_batch=cfg.micro_batch)
        log.info("sparsity-level database in %s (%d attention, %d MLP levels)", self.db_path, len(spec.attn_units),
                 len(spec.mlp_widths))
        source = self.source.spec if self.source is not None else None
        return build_database(self.model, self.adapter, self.tokenizer, self.db_path, spec, source=source,
                              progress=self.progress)

    def _setup_strategy(self) -> None:
        levels = LevelSpace(self.space, self.db.attn_units, self.db.mlp_widths)
        self.strategy = DarwinLMSearch(self.strategy_config(), levels, self.budget, self._evaluate)
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

    def resume(self) -> None:
        import dataclasses

        from tracenas.runtime.config import save_config

        self.strategy.load_state_dict(json.loads((self.out / STATE).read_text()))
        state: DarwinState = self.strategy.state
        _truncate_jsonl(self.history, state.history_len)
        _truncate_jsonl(self.timings, state.history_len, required=False)
        save_config(self.out, "search", dataclasses.replace(self.cfg, resume=False))
        self.wall_before = float(state.cost.get("wall_seconds", 0.0))
        p = state.pending
        at = "" if p is None else f", at stage {p['stage'] + 1} of generation {state.generation}"
        log.info("resuming after generation %d (%d fitness evaluations%s)", state.generation, state.history_len, at)

    # --- hooks -----------------------------------------------------------------------------------
    def _on_evaluated(self, levels: Levels, role: str, task: StageTask, fitness: float, info: dict) -> None:
        state = self.strategy.state
        genome = self.strategy.levels.genome(levels)
        rec = {"index": state.history_len - 1, "generation": task.generation, "stage": task.stage, "role": role,
               "score": _f(fitness), "kl": _f(info.get("kl")), "eval_tokens": info.get("eval_tokens"),
               "finetune_tokens": info.get("finetune_tokens"), "finetune_steps": info.get("finetune_steps"),
               "params": self.space.params(genome), "levels": levels.to_dict(), "genome": genome.to_dict()}
        with open(self.history, "a") as fh:
            fh.write(json.dumps(rec) + "\n")
        with open(self.timings, "a") as fh:
            fh.write(json.dumps({"index": rec["index"], "seconds": round(info.get("seconds", 0.0), 4),
                                 "rank": info.get("rank", 0)}) + "\n")
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(gen=task.generation, stage=task.stage, fitness=f"{fitness:.4f}")

    def _save_state(self) -> None:
        cost = self.strategy.state.cost
        cost["wall_seconds"] = round(self.wall_before + time.perf_counter() - self.t_start, 2)
        atomic_write_json(self.out / STATE, self.strategy.state_dict())

    def _on_stage(self, state: DarwinState) -> None:
        self._save_state()

    def _on_generation(self, state) -> None:  # type: ignore[override]
        self._save_state()
        self._write_arch(self.strategy.best())
        log.info("generation %d/%d: parent fitness %.5f (KL %.5f), %s", state.generation, self.strategy.generations,
                 state.parent_fitness, -state.parent_fitness, format_count(self.space.params(
                     self.strategy.levels.genome(state.parent))))

    # --- outputs ---------------------------------------------------------------------------------
    def search_cost(self) -> dict:
        """What the search spent: fitness evaluations, fine-tuning and scoring tokens, time (all sessions)."""
        c = self.strategy.state.cost
        return {"candidate_evaluations": c["evaluations"], "finetune_tokens": c["finetune_tokens"],
                "finetune_steps": c["finetune_steps"], "eval_tokens": c["eval_tokens"],
                "candidate_seconds": c["candidate_seconds"],
                "wall_seconds": round(self.wall_before + time.perf_counter() - self.t_start, 2),
                "database_seconds_this_session": round(self.database_seconds, 2)}

    def _summary(self, seconds: float) -> dict:
        summary = super()._summary(seconds)
        summary["calibration_tokens"] = max(self.strategy.cfg.eval_tokens)
        summary["search_cost"] = self.search_cost()
        return summary

    def _arch_extra(self) -> dict:
        """More arch.json keys (a strategy built on this recipe adds its own)."""
        return {}

    def _write_arch(self, best: Candidate | None) -> None:
        if best is None:
            return
        cfg, levels = self.cfg, self.strategy.state.parent
        arch = self.space.to_arch_dict(best.genome)
        model_info = self.source.as_dict() if self.source is not None else {"spec": cfg.model}
        model_info["shape"] = self.space.shape.as_dict()
        if cfg.tie_embeddings:
            model_info["tie_embeddings"] = True
        main_out = Path(cfg.out).expanduser().absolute()
        db = os.path.relpath(self.db_path.absolute(), main_out) if not cfg.database else str(self.db_path.absolute())
        extra = {"selection": selection_to_list(self.evaluator.assembler.selection(levels)),
                 "levels": levels.to_dict(), "database": db,
                 "budget_tolerance": cfg.budget_tolerance, "include_embeddings": cfg.include_embeddings,
                 "min_layers": self.space.min_layers, "strategy": cfg.strategy, "search_cost": self.search_cost()}
        extra |= self._arch_extra()
        af = ArchFile(model=model_info, arch=arch, score=_f(best.score), proxy="kl", budget=self.budget, extra=extra)
        atomic_write_text(self.out / "arch.json", af.to_json() + "\n")


__all__ = ["DarwinLMRecipe", "database_path"]
