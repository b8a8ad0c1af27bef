"""`TyrRecipe`: the `SearchRecipe` of `--strategy tyr` (see docs/tyr.md).

It is darwinlm's recipe (history records per stage, state saved after every stage, arch.json with levels and
search cost, candidates split over torchrun ranks) with three steps replaced:

* data: only the calibration pool (supernet calibration and KL reference); there is no fine-tuning;
* scoring: no database up front. Before a round's first generation, `_on_round` gives the model its original
  weights back and builds (rank 0; resumable) or opens that round's supernet in `OUT/supernet/round-R`: a
  sparsity database with per-block levels centred on the round's distribution and expected-error inputs
  (`tracenas.prune.database.build_database`, `inputs="expected"`), then points the `CandidateEvaluator` at it;
* outputs: arch.json names the winning round's supernet; the search cost counts the supernets' build time
  and disk; each round's disk and peak memory figures are logged.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from tracenas.runtime.config import format_count
from tracenas.prune.database import DatabaseSpec, SparsityDatabase, build_database, planned_bytes
from tracenas.runtime.errors import TracenasError
from tracenas.search.strategies.darwinlm import LevelSpace
from tracenas.search.recipes.darwinlm_eval import CandidateEvaluator
from tracenas.search.recipes.darwinlm import DarwinLMRecipe
from tracenas.search.recipes.runner import SearchRecipe
from tracenas.search.strategies.tyr import TyrSearch, TyrState, round_step

log = logging.getLogger(__name__)

SUPERNET = "supernet"


def round_path(out: Path, rnd: int) -> Path:
    return out / SUPERNET / f"round-{rnd}"


class TyrRecipe(DarwinLMRecipe):
    """One tyr search run (the steps of `DarwinLMRecipe`, three of them replaced)."""

    strategy: TyrSearch

    def strategy_config(self):
        return TyrSearch.config_from(self.cfg)

    def _setup_data(self) -> None:
        SearchRecipe._setup_data(self)  # the calibration pool: self.batches
        self.train_windows = torch.zeros(0, self.cfg.seq_len, dtype=torch.long)
        cfg = self.strategy_config()
        if max(cfg.eval_tokens) > self.batches.numel():
            raise TracenasError(f"a stage scores {max(cfg.eval_tokens):,} tokens but the calibration pool holds "
                                f"{self.batches.numel():,} ({self.cfg.num_sequences} x {self.cfg.seq_len}): raise "
                                "--num-sequences or --seq-len")

    def _setup_scorer(self) -> None:
        (self.out / "search").mkdir(parents=True, exist_ok=True)
        self.database_seconds = 0.0
        self.importance, self.probes, self.db = None, None, None
        self.main_out = Path(self.cfg.out).expanduser()
        self.db_path = round_path(self.main_out, 0)
        cfg = self.strategy_config()
        self.evaluator = CandidateEvaluator(self.model, self.adapter, None, self.batches, self.train_windows,
                                            loss_chunk=self.cfg.loss_chunk, micro_batch=self.cfg.micro_batch,
                                            topk=cfg.topk if cfg.fitness == "sparse_kl" else 0)

    def _setup_strategy(self) -> None:
        self.strategy = TyrSearch(self.strategy_config(), self.space, self.budget, self._evaluate)
        self.strategy.on_evaluated = self._on_evaluated
        self.strategy.on_stage = self._on_stage
        self.strategy.on_generation = self._on_generation
        self.strategy.on_round = self._on_round
        self.wall_before = 0.0

    # --- rounds ----------------------------------------------------------------------------------
    def _on_round(self, rnd: int, levels: LevelSpace) -> None:
        """Build (rank 0) or open round `rnd`'s supernet and score from it."""
        cfg = self.cfg
        self.db_path = round_path(self.main_out, rnd)
        spec = DatabaseSpec((), (), sequences=cfg.database_sequences or cfg.num_sequences,
                            seq_len=cfg.database_seq_len or cfg.seq_len, data=cfg.data,
                            micro_batch=cfg.micro_batch, inputs=cfg.supernet_inputs,
                            per_block=tuple(levels.per_block))  # type: ignore[arg-type]
        step = round_step(self.strategy.cfg, rnd)
        log.info("round %d/%d: supernet with level step %.4g%% (%d attention and %d MLP levels in block 0, %s "
                 "inputs) in %s", rnd + 1, self.strategy.cfg.rounds, 100 * step, len(levels.table(0, "attn")),
                 len(levels.table(0, "mlp")), cfg.supernet_inputs, self.db_path)
        t0 = time.perf_counter()
        self.evaluator.restore()  # the supernet is cut from the original weights
        if self.dist.is_main:
            source = self.source.spec if self.source is not None else None
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            db = build_database(self.model, self.adapter, self.tokenizer, self.db_path, spec, source=source,
                                progress=self.progress, desc=f"supernet round {rnd + 1}")
            self.dist.barrier()
        else:
            self.dist.barrier()
            db = SparsityDatabase.open(self.db_path)
        self.db = db
        self.evaluator.use(db)
        seconds = time.perf_counter() - t0
        self.database_seconds += seconds
        planned = planned_bytes(self.space.shape, levels.per_block, 4)
        log.info("round %d supernet: %.1f MB on disk (%.1f MB planned for float32), %.0f s this session%s", rnd + 1,
                 db.disk_bytes() / 1e6, planned / 1e6, seconds, _peak_memory())

    def _on_generation(self, state: TyrState) -> None:  # type: ignore[override]
        self._save_state()
        self._write_arch(self.strategy.best())
        g = self.strategy.cfg.generations
        log.info("round %d generation %d/%d: parent fitness %.5f (KL %.5f), %s", (state.generation - 1) // g + 1,
                 (state.generation - 1) % g + 1, g, state.parent_fitness, -state.parent_fitness,
                 format_count(self.space.params(self.strategy.levels.genome(state.parent))))

    # --- outputs ---------------------------------------------------------------------------------
    def search_cost(self) -> dict:
        cost = super().search_cost()
        del cost["finetune_tokens"], cost["finetune_steps"]
        cost["supernet_seconds_this_session"] = cost.pop("database_seconds_this_session")
        root = self.main_out / SUPERNET
        cost["supernet_bytes"] = sum(f.stat().st_size for f in root.glob("round-*/*") if f.is_file()) \
            if root.is_dir() else 0
        cost["rounds"] = self.strategy.cfg.rounds
        return cost

    def _arch_extra(self) -> dict:
        """arch.json's round (whose supernet `database` names), each round's winner and fitness, the fitness."""
        cfg = self.strategy.cfg
        return {"round": self.strategy.state.round, "rounds": self.strategy.round_winners(),
                "round_fitness": self.strategy.round_fitness(),
                "fitness": cfg.fitness if cfg.fitness == "kl" else f"{cfg.fitness} (top {cfg.topk})"}


def _peak_memory() -> str:
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    gpu = f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if torch.cuda.is_available() else ""
    return f", peak RSS {rss:.0f} MB{gpu}"


__all__ = ["TyrRecipe", "round_path"]
