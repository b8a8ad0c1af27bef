"""tracenas: prune a Hugging Face causal LM to a parameter budget (search, export, recover, eval, bench).

The CLI is a thin map from verbs to library functions:

    tracenas search --preset quick --budget 0.6 --out runs/demo
    tracenas export runs/demo
    tracenas bench runs/demo/model
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from tracenas.runtime.errors import TracenasError, io_failure_reason, is_io_failure
from tracenas.runtime.logs import console_logging

VERBS = ("search", "export", "database", "bench", "recover", "eval", "run", "validate_proxy")


def _load(verb: str):
    try:
        return importlib.import_module(f"tracenas.commands.{verb}")
    except ModuleNotFoundError as err:
        if err.name == f"tracenas.commands.{verb}":
            return None
        raise


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (`tracenas VERB: error: ...`), not usage + error."""

    def error(self, message: str):  # noqa: D102 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    from tracenas import __version__

    parser = OneLineParser(prog="tracenas", description=__doc__.splitlines()[0],
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"tracenas {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=OneLineParser)
    handlers = {}
    for verb in VERBS:
        mod = _load(verb)
        if mod is None:
            continue
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        mod.register(p)
        if "--threads" not in p._option_string_actions:
            p.add_argument("--threads", type=int, default=None, metavar="N",
                           help="CPU threads for torch (default: torch's choice, one per core)")
        handlers[mod.NAME] = mod
    return parser, handlers


def main(argv: list[str] | None = None) -> int:
    parser, handlers = build_parser()
    args = parser.parse_args(argv)
    console_logging(args.verbose)
    if not args.verb:
        parser.print_help()
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        if args.verb != "bench":  # bench applies its own --threads around the timed region only
            from tracenas.runtime.device import set_threads

            set_threads(getattr(args, "threads", None))
        return int(handlers[args.verb].run(args) or 0)
    except TracenasError as err:
        print(f"tracenas {args.verb}: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        # Disk full, a file-size limit, permissions: one line saying what the system said about which file.
        # safetensors reports the same I/O failures as its own exception type, not OSError.
        if not is_io_failure(err):
            raise
        print(f"tracenas {args.verb}: error: {describe_io_error(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"tracenas {args.verb}: interrupted", file=sys.stderr)
        return 130


def describe_io_error(err: Exception) -> str:
    """`File too large: runs/x/history.jsonl`: an I/O failure as one line."""
    what = io_failure_reason(err)
    where = getattr(err, "filename", None)
    return f"{what}: {where}" if where else f"{what}"


if __name__ == "__main__":
    sys.exit(main())
