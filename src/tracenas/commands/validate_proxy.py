"""`tracenas validate-proxy`: rank correlation of zero-shot proxies with perplexity after recovery."""

from __future__ import annotations

import argparse

from tracenas.config import add_arguments, from_args, load_yaml

NAME = "validate-proxy"
HELP = "score sampled pruned candidates with every proxy and correlate with their perplexity after recovery"


def register(parser: argparse.ArgumentParser) -> None:
    from tracenas.validate.config import ValidateConfig

    parser.add_argument("--config", metavar="YAML", help="read options from a YAML file (flags override it)")
    add_arguments(parser, ValidateConfig)


def run(args: argparse.Namespace) -> int:
    from tracenas.validate import ValidateConfig, run_validation

    cfg = from_args(ValidateConfig, args, load_yaml(getattr(args, "config", None)))
    res = run_validation(cfg)
    if res.summary:  # rank 0 under torchrun
        print((res.out / "table.md").read_text())
        print(f"{res.candidates} candidates in {res.seconds:.0f} s -> {res.out}/table.md, results.json, scatter.png"
              + (", sweep.md" if cfg.sweep else ""))
    return 0
