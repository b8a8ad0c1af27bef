"""`TyrRecipe`: the `LevelRecipe` of `--strategy tyr` (see docs/tyr.md).

What it adds to the level-based recipe (`search.recipes.levels`; there is no fine-tuning, so no training pool):

* scoring: no database up front. Before a round's first generation, `_on_round` gives the model its original
  weights back and builds (rank 0; resumable) or opens that round's supernet in `OUT/supernet/round-R`: a
  sparsity database with per-block levels centred on the round's distribution and expected-error inputs
  (`tracenas.prune.database.build_database`, `inputs="expected"`), then points the `CandidateEvaluator` at it;
* outputs: arch.json names the winning round's supernet, each round's winner and fitness; the search cost counts
  the supernets' build time and disk; each round's disk and peak memory figures are logged.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from tracenas.prune.database import DatabaseSpec, SparsityDatabase, build_database, planned_bytes
from tracenas.search.recipes.levels import LevelRecipe
from tracenas.search.strategies.levels import LevelSpace
from tracenas.search.strategies.tyr import TyrConfig, TyrSearch, round_step

log = logging.getLogger(__name__)

SUPERNET = "supernet"


def round_path(out: Path, rnd: int) -> Path:
    return out / SUPERNET / f"round-{rnd}"


class TyrRecipe(LevelRecipe):
    """One tyr search run."""

    strategy: TyrSearch

    def strategy_config(self) -> TyrConfig:
        return TyrSearch.config_from(self.cfg)

    def _new_strategy(self) -> TyrSearch:
        strategy = TyrSearch(self.strategy_config(), self.space, self.budget, self._evaluate)
        strategy.on_round = self._on_round
        return strategy

    def _first_database(self) -> None:
        """None: each round's supernet is built when the round begins (`_on_round`)."""
        self.database_seconds = 0.0
        self.db = None
        self.db_path = round_path(self.main_out, 0)
        return None

    # --- rounds ----------------------------------------------------------------------------------
    def _on_round(self, rnd: int, levels: LevelSpace) -> None:
        """Build (rank 0) or open round `rnd`'s supernet and score from it."""
        cfg = self.cfg
        self.db_path = round_path(self.main_out, rnd)
        spec = DatabaseSpec(levels.attn_units, levels.mlp_widths, sequences=cfg.database_sequences or cfg.num_sequences,
                            seq_len=cfg.database_seq_len or cfg.seq_len, data=cfg.data,
                            micro_batch=cfg.micro_batch, inputs=cfg.supernet_inputs, per_block=levels.per_block)
        step = round_step(self.strategy.cfg, rnd)
        log.info("round %d/%d: supernet with level step %.4g%% (%d attention and %d MLP levels in block 0, %s "
                 "inputs) in %s", rnd + 1, self.strategy.cfg.rounds, 100 * step, len(levels.table(0, "attn")),
                 len(levels.table(0, "mlp")), cfg.supernet_inputs, self.db_path)
        t0 = time.perf_counter()
        self.evaluator.restore()  # the supernet is cut from the original weights
        db = self._built_on_main(lambda: self._build_round(spec, rnd))
        self.db = db
        self.evaluator.use(db)
        seconds = time.perf_counter() - t0
        self.database_seconds += seconds
        planned = planned_bytes(self.space.shape, levels.per_block or (), 4)
        log.info("round %d supernet: %.1f MB on disk (%.1f MB planned for float32), %.0f s this session%s", rnd + 1,
                 db.disk_bytes() / 1e6, planned / 1e6, seconds, _peak_memory())

    def _build_round(self, spec: DatabaseSpec, rnd: int) -> SparsityDatabase:
        source = self.source.spec if self.source is not None else None
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        return build_database(self.model, self.adapter, self.tokenizer, self.db_path, spec, source=source,
                              progress=self.progress, desc=f"supernet round {rnd + 1}")

    # --- outputs ---------------------------------------------------------------------------------
    def _setup_cost(self) -> dict:
        root = self.main_out / SUPERNET
        size = sum(f.stat().st_size for f in root.glob("round-*/*") if f.is_file()) if root.is_dir() else 0
        return {"supernet_seconds_this_session": round(self.database_seconds, 2), "supernet_bytes": size,
                "rounds": self.strategy.cfg.rounds}

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
