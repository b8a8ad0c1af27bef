"""The `--strategy` registry: names, one-line descriptions and classes, importing neither numpy nor torch.

    from tracenas.search.registry import register_strategy, strategy_class, strategy_names
    register_strategy("darwinlm", DarwinLMSearch, "(1+lambda) evolution over sparsity levels")
    strategy_names()               # ('evolution', 'uniform', 'random', 'darwinlm'): the --strategy choices
    strategy_class("darwinlm")     # -> DarwinLMSearch, a `tracenas.search.strategies.base.SearchStrategy`

`SearchConfig` and the CLI read the names when a parser is built or a config validated, so a strategy
registered after import is a valid `--strategy` from then on, and `tracenas search --help` never
imports a strategy's module (built-in classes are named by import path and loaded on first use).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from tracenas.runtime.errors import TracenasError

if TYPE_CHECKING:
    from tracenas.search.strategies.base import SearchStrategy

# Insertion order is the order of the `--strategy` choices.
STRATEGY_HELP: dict[str, str] = {
    "evolution": "TraceNAS: importance anchors, elites, crossover, mutation",
    "uniform": "one candidate, the same ratio in every block",
    "random": "random search, same candidate budget",
    "darwinlm": "DarwinLM: (1+lambda) evolution over database levels, fine-tuned multistep selection",
    "tyr": "Týr-the-Pruner: rounds of supernet evolution, coarse-to-fine levels, expected-error inputs",
    "depth": "depth-only baseline: drop the blocks of lowest Block Influence (ShortGPT)",
}
_CLASSES: dict[str, "str | type[SearchStrategy]"] = {
    "evolution": "tracenas.search.strategies.evolution:Evolution",
    "uniform": "tracenas.search.strategies.simple:UniformSearch",
    "random": "tracenas.search.strategies.simple:RandomSearch",
    "darwinlm": "tracenas.search.strategies.darwinlm:DarwinLMSearch",
    "tyr": "tracenas.search.strategies.tyr:TyrSearch",
    "depth": "tracenas.search.strategies.depth:DepthSearch",
}


def strategy_names() -> tuple[str, ...]:
    """Every selectable strategy, built-in ones first, then registered ones in registration order."""
    return tuple(STRATEGY_HELP)


def strategy_help() -> str:
    return ", ".join(f"{name} ({text})" for name, text in STRATEGY_HELP.items())


def register_strategy(name: str, cls: "type[SearchStrategy] | str", help: str) -> None:  # noqa: A002
    """Make `cls` (a `SearchStrategy` subclass, or its "module:Class" path) the strategy `name`."""
    if not isinstance(cls, str):
        from tracenas.search.strategies.base import SearchStrategy

        if not (isinstance(cls, type) and issubclass(cls, SearchStrategy)):
            raise TracenasError(f"strategy {name!r}: {cls!r} is not a SearchStrategy subclass")
    STRATEGY_HELP[name] = help
    _CLASSES[name] = cls


def strategy_class(name: str) -> "type[SearchStrategy]":
    if name not in _CLASSES:
        raise TracenasError(f"unknown strategy {name!r}; choose from {', '.join(strategy_names())}")
    cls = _CLASSES[name]
    if isinstance(cls, str):
        module, _, attr = cls.partition(":")
        cls = _CLASSES[name] = getattr(importlib.import_module(module), attr)
    return cls


__all__ = ["STRATEGY_HELP", "register_strategy", "strategy_class", "strategy_help", "strategy_names"]
