"""`tracenas database build OUT` / `tracenas database info OUT`: the sparsity-level database of a base model
(the stage itself is `tracenas.prune.database_stage`)."""

from __future__ import annotations

import argparse

from tracenas.prune.database_stage import DatabaseConfig
from tracenas.runtime.config import add_config_arguments, config_from_args

NAME = "database"
HELP = "build (resumable) or describe the sparsity-level database: every block's attention and MLP pruned and " \
       "reconstructed at fixed levels (what the darwinlm and tyr strategies search over)"


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True, parser_class=type(parser))
    build = sub.add_parser("build", help="build or resume a database", description="build or resume a database")
    build.add_argument("out", metavar="OUT", help="database directory")
    add_config_arguments(build, DatabaseConfig)
    build.add_argument("--threads", type=int, default=None, metavar="N", help="CPU threads for torch")
    info = sub.add_parser("info", help="levels, sizes and settings of a database", description="describe a database")
    info.add_argument("out", metavar="OUT", help="database directory")


def run(args: argparse.Namespace) -> int:
    from tracenas.prune.database_stage import build, describe, info

    if args.action == "info":
        print(info(args.out))
        return 0
    print(describe(build(config_from_args(DatabaseConfig, args))))
    return 0
