"""`tracenas database build OUT` / `tracenas database info OUT`: the sparsity-level database of a base model."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from tracenas.runtime.config import add_config_arguments, config_from_args, opt

NAME = "database"
HELP = "build (resumable) or describe the sparsity-level database: every block's attention and MLP pruned and " \
       "reconstructed at fixed levels (what the darwinlm and tyr strategies search over)"


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


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True, parser_class=type(parser))
    build = sub.add_parser("build", help="build or resume a database", description="build or resume a database")
    build.add_argument("out", metavar="OUT", help="database directory")
    add_config_arguments(build, DatabaseConfig)
    build.add_argument("--threads", type=int, default=None, metavar="N", help="CPU threads for torch")
    info = sub.add_parser("info", help="levels, sizes and settings of a database", description="describe a database")
    info.add_argument("out", metavar="OUT", help="database directory")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tracenas.runtime.config import save_config
    from tracenas.prune.database import SparsityDatabase, build_database
    from tracenas.runtime.logs import run_log

    if args.action == "info":
        db = SparsityDatabase.open(args.out)
        print(describe(db))
        return 0
    import torch

    from tracenas.arch import SearchSpace
    from tracenas.prune.database import DatabaseSpec
    from tracenas.models import get_adapter
    from tracenas.models.loading import load_model

    cfg = config_from_args(DatabaseConfig, args)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    with run_log(out, "database"):
        model, tokenizer, source = load_model(cfg.model, dtype=torch.float32, tie_embeddings=cfg.tie_embeddings)
        adapter = get_adapter(model)
        spec = DatabaseSpec.default(SearchSpace(adapter.shape()), cfg.mlp_levels, importance=cfg.importance,
                                    damp=cfg.damp, sequences=cfg.calib_sequences, seq_len=cfg.calib_seq_len,
                                    data=cfg.data, seed=cfg.seed, micro_batch=cfg.micro_batch, dtype=cfg.dtype,
                                    obs_chunk=cfg.obs_chunk)
        db = build_database(model, adapter, tokenizer, out, spec, source=source.spec)
        save_config(out, "database", cfg)
    print(describe(db))
    return 0


def describe(db) -> str:
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
