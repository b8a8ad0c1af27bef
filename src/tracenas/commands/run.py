"""`tracenas run`: the whole pipeline in one resumable run directory."""

from __future__ import annotations

import argparse

from tracenas.config import add_arguments, from_args, load_yaml
from tracenas.pipeline import RunConfig

NAME = "run"
HELP = "search -> export -> recover -> eval -> bench in one run directory, skipping finished stages; writes report.md"


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML file of options (flags override it)")
    add_arguments(parser, RunConfig)


def run(args: argparse.Namespace) -> int:
    from tracenas.pipeline import run_pipeline

    cfg = from_args(RunConfig, args, load_yaml(getattr(args, "config", None)))
    run_pipeline(cfg)
    print(open(f"{cfg.out}/report.md").read())
    return 0
