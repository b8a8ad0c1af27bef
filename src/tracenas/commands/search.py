"""`tracenas search`: find the best pruned architecture under a parameter budget."""

from __future__ import annotations

import argparse

from tracenas.config import add_arguments, from_args, load_yaml
from tracenas.search.config import SearchConfig

NAME = "search"
HELP = "evolutionary search for a pruned architecture scored by a zero-shot proxy (TraceNAS)"


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML file of options (flags override it)")
    add_arguments(parser, SearchConfig)


def run(args: argparse.Namespace) -> int:
    from tracenas.arch import format_count  # imports torch (through tracenas.models): only when running
    from tracenas.search.runner import run_search

    cfg = from_args(SearchConfig, args, load_yaml(getattr(args, "config", None)))
    res = run_search(cfg)
    b = res.best
    print(f"best {cfg.resolved().proxy} score {b.score:.4f} with {format_count(b.params)} parameters "
          f"({b.params / res.base_params:.1%} of {format_count(res.base_params)}; budget {format_count(res.budget)}), "
          f"{sum(b.genome.keep)}/{len(b.genome.keep)} blocks kept")
    print(f"{res.candidates_scored} candidates scored in {res.seconds:.0f} s -> {res.out}/arch.json")
    return 0
