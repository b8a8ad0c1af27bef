"""`tracenas recover MODEL_DIR --preset quick --out DIR`: continued pretraining of a (pruned) model."""

from __future__ import annotations

import argparse
import os

from tracenas.runtime.config import add_config_arguments, config_from_args

NAME = "recover"
HELP = "continued pretraining (recovery) of a pruned or dense model; resumable with --resume"


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", default=argparse.SUPPRESS,
                        help="model to recover: tracenas-exported or HF directory, .gguf, Hub id (default: "
                             "the built-in model)")
    add_config_arguments(parser, _config_class(), skip=("model",))


def _config_class():
    from tracenas.recover.config import RecoverConfig

    return RecoverConfig


def run(args: argparse.Namespace) -> int:
    from tracenas.recover import recover

    cfg = config_from_args(_config_class(), args)
    result = recover(cfg)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun / accelerate launch, report once
        return 0
    rows = [
        ("steps", f"{result.steps:,} / {result.total_steps:,}"),
        ("tokens", f"{result.tokens_seen:,}"),
        ("final loss (last 10 steps)", "-" if result.final_loss is None else f"{result.final_loss:.4f}"),
        ("throughput", f"{result.tokens_per_s:,.0f} tokens/s"),
        ("training time", f"{result.wall_time_s:,.1f} s"),
        ("output", result.out),
    ]
    if result.path:
        rows.append(("model", result.path))
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
    if not result.completed:
        print(f"stopped early at step {result.steps}; continue with: tracenas recover ... --out {result.out} --resume")
    return 0
