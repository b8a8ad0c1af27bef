"""`tracenas run`: the whole pipeline in one resumable run directory."""

from __future__ import annotations

import argparse

from tracenas.pipeline.config import add_run_arguments, run_config_from_args

NAME = "run"
HELP = "search -> export -> recover -> eval -> bench in one run directory, skipping finished stages; writes report.md"


def register(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from tracenas.pipeline.runner import run_pipeline

    cfg = run_config_from_args(args)
    run_pipeline(cfg)
    print(open(f"{cfg.out}/report.md").read())
    return 0
