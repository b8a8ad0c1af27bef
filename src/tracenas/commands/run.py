"""`tracenas run`: the whole pipeline in one resumable run directory."""

from __future__ import annotations

import argparse

from tracenas.runtime.config import add_config_arguments, config_from_args
from tracenas.pipeline.runner import RunConfig

NAME = "run"
HELP = "search -> export -> recover -> eval -> bench in one run directory, skipping finished stages; writes report.md"


def register(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, RunConfig)


def run(args: argparse.Namespace) -> int:
    from tracenas.pipeline.runner import run_pipeline

    cfg = config_from_args(RunConfig, args)
    run_pipeline(cfg)
    print(open(f"{cfg.out}/report.md").read())
    return 0
