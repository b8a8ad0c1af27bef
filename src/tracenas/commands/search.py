"""`tracenas search`: find the best pruned architecture under a parameter budget."""

from __future__ import annotations

import argparse
import sys

from tracenas.runtime.config import add_config_arguments, from_args, load_yaml
from tracenas.search.config import SearchConfig

NAME = "search"
HELP = "evolutionary search for a pruned architecture scored by a zero-shot proxy (TraceNAS)"


def register(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, SearchConfig)
    parser.add_argument("--dry-run", action="store_true",
                        help="print the search space size, budget, parameter split, candidates and estimated cost "
                             "per candidate from the model's config, then exit: nothing is scored or written")


def run(args: argparse.Namespace) -> int:
    from tracenas.runtime.config import format_count  # imports torch (through tracenas.models): only when running
    from tracenas.search.recipes.runner import run_search, saved_config

    base = load_yaml(getattr(args, "config", None))
    if getattr(args, "resume", False):
        # Options left out of a resume are those the search was started with (flags still override, and a
        # differing one is refused by run_search); `out` is the directory given now, so a moved run resumes.
        out = getattr(args, "out", None) or base.get("out") or SearchConfig.out
        base = {**saved_config(out), **base}
    cfg = from_args(SearchConfig, args, base)
    if getattr(args, "dry_run", False):
        from tracenas.search.plan import plan_search

        print(plan_search(cfg).describe())
        return 0
    try:
        res = run_search(cfg)
    except KeyboardInterrupt:
        print(f"tracenas search: interrupted; {_kept(cfg.out)}", file=sys.stderr)
        return 130
    b = res.best
    print(f"best {cfg.resolved().proxy} score {b.score:.4f} with {format_count(b.params)} parameters "
          f"({b.params / res.base_params:.1%} of {format_count(res.base_params)}; budget {format_count(res.budget)}), "
          f"{sum(b.genome.keep)}/{len(b.genome.keep)} blocks kept")
    print(f"{res.candidates_scored} candidates scored in {res.seconds:.0f} s -> {res.out}/arch.json")
    return 0


def _kept(out: str) -> str:
    """What an interrupted search left to resume, read back from its saved state (never assumed)."""
    from tracenas.search.recipes.runner import saved_candidates

    n = saved_candidates(out)
    if n == 0:
        return "no candidate had been scored, so nothing was kept"
    return (f"{n} candidate{'s' if n != 1 else ''} scored and saved; rerun with "
            f"`tracenas search --out {out} --resume` to continue")
