"""The `database` stage: build (resumably) or describe a base model's sparsity-level database in a directory.

    cfg = DatabaseConfig(out="runs/db", mlp_levels=11)
    db = build(cfg)                  # runs/db: manifest.json, block-NNN.safetensors, database.yaml, database.log
    is_done("runs/db", cfg)          # complete, and built with cfg's settings
    print(info("runs/db"))           # levels, settings, size on disk

What is built, and how a killed build resumes, is `tracenas.prune.database`; this module is the stage around it:
the settings as a config dataclass (the flags of `tracenas database build`), the base model loaded, the run
directory guarded (`RunDirGuard`: a failure before anything resumable was written leaves the disk as it was),
its log and the resolved `database.yaml`. It lives in prune/, beside the database it drives, rather than in a
stage folder of its own: prune/ sits below the stages, so the search's recipes (which build databases of their
own through `build_database`) and the pipeline may use it too, where stages may not import each other.

Free of torch at import (the CLI builds its parser from `DatabaseConfig`): the model-side modules are imported
by the functions that need them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tracenas.runtime.config import load_yaml, opt, save_config, to_dict
from tracenas.runtime.errors import RunDirError, TracenasError
from tracenas.runtime.logs import run_log
from tracenas.runtime.rundir import RunDirGuard, check_writable_dir

if TYPE_CHECKING:
    from tracenas.models.adapter import ModelAdapter
    from tracenas.prune.database import DatabaseSpec, SparsityDatabase

VERB = "database"  # the run directory's database.yaml and database.log


@dataclass
class DatabaseConfig:
    """Settings of `tracenas database build`."""

    out: str = opt("", "database directory (a killed build resumes there)", cli=False)
    model: str | None = opt(None, "base model: Hub id, directory or .gguf (default: embedded SmolLM2-135M)")
    tie_embeddings: bool = opt(False, "tie an output head equal to the embeddings up to quantization noise (GGUF)")
    importance: str = opt("obs", "removal order inside each sub-block: greedy OBS or Wanda", choices=["obs", "wanda"])
    mlp_levels: int = opt(11, "MLP levels, evenly spaced from the full width to 0 and snapped to multiples of 32 "
                              "(attention: every KV-valid head count)")
    obs_chunk: int = opt(32, "MLP channels removed per OBS step (1: strictly one at a time)")
    damp: float = opt(0.01, "reconstruction ridge: this fraction of the mean Gram diagonal")
    calib_sequences: int = opt(16, "calibration windows")
    calib_seq_len: int = opt(512, "tokens per calibration window")
    micro_batch: int = opt(4, "windows per forward pass")
    data: str | None = opt(None, "text for the calibration split (default: embedded Wikipedia)")
    dtype: str = opt("float32", "dtype of the stored weights", choices=["float32", "bfloat16", "float16"])
    seed: int = opt(0, "seed of the document split (keep 0: evaluation always uses split seed 0, so other seeds may "
                       "calibrate on evaluation text)")


def database_spec(cfg: DatabaseConfig, adapter: ModelAdapter) -> DatabaseSpec:
    """The levels and method `cfg` asks of the model behind `adapter`."""
    from tracenas.arch import SearchSpace
    from tracenas.prune.database import DatabaseSpec

    return DatabaseSpec.default(SearchSpace(adapter.shape()), cfg.mlp_levels, importance=cfg.importance,
                                damp=cfg.damp, sequences=cfg.calib_sequences, seq_len=cfg.calib_seq_len,
                                data=cfg.data, seed=cfg.seed, micro_batch=cfg.micro_batch, dtype=cfg.dtype,
                                obs_chunk=cfg.obs_chunk)


def _has_manifest(out: Path) -> bool:
    from tracenas.prune.database import MANIFEST

    return (out / MANIFEST).is_file()


def build(cfg: DatabaseConfig, *, progress: bool = True) -> SparsityDatabase:
    """Build, or resume, the database `cfg` describes in `cfg.out`; returns it opened. Writes `database.log`
    there and, once the database is complete, `database.yaml` (the resolved settings)."""
    import torch

    from tracenas.models import get_adapter
    from tracenas.models.loading import load_model
    from tracenas.prune.database import build_database

    if not cfg.out:
        raise TracenasError("the database needs a directory (DatabaseConfig.out)")
    out = check_writable_dir(cfg.out, flag="OUT")
    with RunDirGuard(out, resumable=lambda: _has_manifest(out)), run_log(out, VERB):
        model, tokenizer, source = load_model(cfg.model, dtype=torch.float32, tie_embeddings=cfg.tie_embeddings)
        adapter = get_adapter(model)
        db = build_database(model, adapter, tokenizer, out, database_spec(cfg, adapter), source=source.spec,
                            progress=progress)
        save_config(out, VERB, cfg)
    return db


def is_done(run_dir: str | os.PathLike, cfg: DatabaseConfig | None = None) -> bool:
    """Whether `run_dir` holds a complete database; with `cfg`, one that `build(cfg)` made (its `database.yaml`
    records the same settings, the directory aside). Reads no model: a database written by a search's
    recipe, which has no `database.yaml`, is done only when no `cfg` is asked about."""
    from tracenas.prune.database import SparsityDatabase

    path = Path(run_dir)
    try:
        if not SparsityDatabase.open(path).complete:
            return False
    except RunDirError:
        return False
    if cfg is None:
        return True
    saved = path / f"{VERB}.yaml"
    if not saved.is_file():
        return False
    recorded = load_yaml(saved)
    recorded.pop("out", None)
    wanted = to_dict(cfg)
    wanted.pop("out")
    return recorded == wanted


def describe(db: SparsityDatabase) -> str:
    """What `tracenas database build` and `info` print: levels, model, method, size on disk."""
    fp = db.manifest["fingerprint"]
    shape = fp["model"]["shape"]
    lines = [f"database {db.path} ({'complete' if db.complete else 'incomplete: run build again to resume'})",
             f"  model: {fp['model']['source']} ({shape['num_layers']} blocks, checksum {fp['model']['checksum']})",
             *([f"  attention levels (units kept): {list(db.attn_units)}",
                f"  MLP levels (channels kept): {list(db.mlp_widths)}"] if db.per_block is None else
               [f"  per-block levels (a tyr supernet round), block {i}: attention {list(a)}, MLP {list(m)}"
                for i, (a, m) in enumerate(db.per_block)]),
             f"  method: {fp['method']}",
             f"  on disk: {db.disk_bytes() / 1e6:.1f} MB"]
    return "\n".join(lines)


def info(path: str | os.PathLike) -> str:
    """`describe` of the database in `path` (complete or not); one-line errors where there is none."""
    from tracenas.prune.database import SparsityDatabase

    return describe(SparsityDatabase.open(path))


__all__ = ["DatabaseConfig", "build", "database_spec", "describe", "info", "is_done"]
