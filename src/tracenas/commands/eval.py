"""`tracenas eval MODEL --tasks ... --out DIR`: held-out perplexity and downstream accuracy."""

from __future__ import annotations

import argparse
import logging

from tracenas.runtime.config import add_config_arguments, config_from_args

NAME = "eval"
HELP = "perplexity on the held-out split and lm-evaluation-harness tasks (local JSONL tasks work offline)"


def _config_class():
    from tracenas.eval.config import EvalConfig

    return EvalConfig


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", default=argparse.SUPPRESS,
                        help="model: tracenas-exported or HF directory, .gguf, Hub id (default: the built-in model)")
    add_config_arguments(parser, _config_class(), skip=("model",))


def run(args: argparse.Namespace) -> int:
    from tracenas.eval.evaluate import evaluate, format_results

    if not getattr(args, "verbose", False):
        for noisy in ("lm_eval", "datasets", "evaluate"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        # "pretrained is not a str": expected, we hand lm-eval the already loaded model on purpose
        logging.getLogger("lm_eval.models.huggingface").setLevel(logging.ERROR)
    cfg = config_from_args(_config_class(), args)
    results = evaluate(cfg)
    print(format_results(results))
    if cfg.out:
        print(f"results: {cfg.out}/results.json")
    return 0
