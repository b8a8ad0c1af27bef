"""`tracenas validate-proxy`: rank correlation of zero-shot proxies with perplexity after recovery."""

from __future__ import annotations

import argparse

from tracenas.runtime.config import add_config_arguments, config_from_args

NAME = "validate-proxy"
HELP = "score sampled pruned candidates with every proxy and correlate with their perplexity after recovery"


def register(parser: argparse.ArgumentParser) -> None:
    from tracenas.validate.config import ValidateConfig

    add_config_arguments(parser, ValidateConfig)


def run(args: argparse.Namespace) -> int:
    from tracenas.validate import ValidateConfig, run_validation

    cfg = config_from_args(ValidateConfig, args)
    res = run_validation(cfg)
    if res.summary:  # rank 0 under torchrun
        print((res.out / "table.md").read_text())
        print(f"{res.candidates} candidates in {res.seconds:.0f} s -> {res.out}/table.md, results.json, scatter.png"
              + (", sweep.md" if cfg.sweep else ""))
    return 0
