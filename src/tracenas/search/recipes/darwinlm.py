"""`DarwinLMRecipe`: the `LevelRecipe` of `--strategy darwinlm` (see docs/darwinlm.md).

What it adds to the level-based recipe (`search.recipes.levels`):

* data: a training pool of windows of the training split (twice the largest stage's fine-tuning tokens);
* scoring: one sparsity-level database for the whole search (`--database`, or built / resumed in
  OUT/database on the calibration windows);
* outputs: the search cost counts the fine-tuning and the database's build time.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch

from tracenas.prune.database import DatabaseSpec, SparsityDatabase, build_database, model_checksum
from tracenas.runtime.errors import TracenasError
from tracenas.search.recipes.levels import LevelRecipe
from tracenas.search.strategies.darwinlm import DarwinLMConfig, DarwinLMSearch
from tracenas.search.strategies.levels import LevelSpace

log = logging.getLogger(__name__)

DATABASE = "database"


def database_path(out: Path, spec: str | None) -> Path:
    return Path(spec).expanduser() if spec else out / DATABASE


class DarwinLMRecipe(LevelRecipe):
    """One darwinlm search run."""

    strategy: DarwinLMSearch
    db: SparsityDatabase

    def strategy_config(self) -> DarwinLMConfig:
        return DarwinLMSearch.config_from(self.cfg)

    def _new_strategy(self) -> DarwinLMSearch:
        levels = LevelSpace(self.space, self.db.attn_units, self.db.mlp_widths)
        return DarwinLMSearch(self.strategy_config(), levels, self.budget, self._evaluate)

    def _train_windows(self) -> torch.Tensor:
        from tracenas import data as data_mod

        train = max(self.strategy_config().train_tokens)
        windows = max(1, 2 * math.ceil(train / self.cfg.seq_len)) if train else 1
        return data_mod.token_batches(self.tokenizer, self.cfg.data, split="train", num_sequences=windows,
                                      seq_len=self.cfg.seq_len)

    def _first_database(self) -> SparsityDatabase:
        t0 = time.perf_counter()
        self.db_path = database_path(self.main_out, self.cfg.database)
        self.db = self._built_on_main(self._main_database)
        self.database_seconds = time.perf_counter() - t0
        return self.db

    def _main_database(self) -> SparsityDatabase:
        """The database given with --database (complete, of this model), else one built in OUT/database."""
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

    # --- outputs ---------------------------------------------------------------------------------
    def _training_cost(self, cost: dict) -> dict:
        return {"finetune_tokens": cost["finetune_tokens"], "finetune_steps": cost["finetune_steps"]}

    def _setup_cost(self) -> dict:
        return {"database_seconds_this_session": round(self.database_seconds, 2)}


__all__ = ["DarwinLMRecipe", "database_path"]
