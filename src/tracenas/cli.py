"""tracenas: prune a Hugging Face causal LM to a parameter budget (search, export, recover, eval, bench).

The CLI is a thin map from verbs to library functions:

    tracenas search --preset quick --budget 0.6 --out runs/demo
    tracenas export runs/demo
    tracenas bench runs/demo/model
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from tracenas.errors import TracenasError

VERBS = ("search", "export", "bench", "recover", "eval", "run", "validate_proxy")


def _load(verb: str):
    try:
        return importlib.import_module(f"tracenas.commands.{verb}")
    except ModuleNotFoundError as err:
        if err.name == f"tracenas.commands.{verb}":
            return None
        raise


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    from tracenas import __version__

    parser = argparse.ArgumentParser(prog="tracenas", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"tracenas {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    handlers = {}
    for verb in VERBS:
        mod = _load(verb)
        if mod is None:
            continue
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        mod.register(p)
        if "--threads" not in p._option_string_actions:
            p.add_argument("--threads", type=int, default=None, metavar="N",
                           help="CPU threads for torch (default: torch's choice, one per core); "
                                "1 is often fastest on a small shared machine")
        handlers[mod.NAME] = mod
    return parser, handlers


def main(argv: list[str] | None = None) -> int:
    parser, handlers = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("transformers", "huggingface_hub", "urllib3", "matplotlib", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not args.verb:
        parser.print_help()
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        if args.verb != "bench":  # bench applies its own --threads around the timed region only
            from tracenas.device import set_threads

            set_threads(getattr(args, "threads", None))
        return int(handlers[args.verb].run(args) or 0)
    except TracenasError as err:
        print(f"tracenas {args.verb}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tracenas {args.verb}: interrupted (state saved; rerun with --resume where supported)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
