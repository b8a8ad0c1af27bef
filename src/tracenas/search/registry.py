"""The `--strategy` registry: names, one-line descriptions, presets and classes, importing neither numpy nor torch.

    from tracenas.search.registry import register_strategy, strategy_class, strategy_names
    register_strategy("darwinlm", DarwinLMSearch, "(1+lambda) evolution over sparsity levels", presets={...})
    strategy_names()               # ('evolution', 'uniform', 'random', 'darwinlm'): the --strategy choices
    strategy_class("darwinlm")     # -> DarwinLMSearch, a `tracenas.search.strategies.base.Strategy`
    strategy_presets("darwinlm")   # {"paper": {...}, "quick": {...}}: what each --preset sets for it

`SearchConfig` and the CLI read the names when a parser is built or a config validated, so a strategy
registered after import is a valid `--strategy` from then on, and `tracenas search --help` never
imports a strategy's module (built-in classes are named by import path and loaded on first use). What
a strategy adds to a `--preset` lives here for the same reason (the help texts show it); which options it
refuses is its class's `check_options`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from tracenas.runtime.errors import TracenasError

if TYPE_CHECKING:
    from tracenas.search.strategies.base import Strategy

# Insertion order is the order of the `--strategy` choices.
STRATEGY_HELP: dict[str, str] = {
    "evolution": "TraceNAS: importance anchors, elites, crossover, mutation",
    "uniform": "one candidate, the same ratio in every block",
    "random": "random search, same candidate budget",
    "darwinlm": "DarwinLM: (1+lambda) evolution over database levels, fine-tuned multistep selection",
    "tyr": "Týr-the-Pruner: rounds of supernet evolution, coarse-to-fine levels, expected-error inputs",
    "depth": "depth-only baseline: drop the blocks of lowest Block Influence (ShortGPT)",
}
_CLASSES: dict[str, "str | type[Strategy]"] = {
    "evolution": "tracenas.search.strategies.evolution:Evolution",
    "uniform": "tracenas.search.strategies.simple:UniformSearch",
    "random": "tracenas.search.strategies.simple:RandomSearch",
    "darwinlm": "tracenas.search.strategies.darwinlm:DarwinLMSearch",
    "tyr": "tracenas.search.strategies.tyr:TyrSearch",
    "depth": "tracenas.search.strategies.depth:DepthSearch",
}
# What a strategy's --preset sets on top of `search.config.PRESETS` (options left out on the command line).
STRATEGY_PRESETS: dict[str, dict[str, dict]] = {
    # DarwinLM (arXiv 2502.07780; see docs/darwinlm.md). paper: the official search script's settings;
    # quick: sized for the default model on a small CPU machine.
    "darwinlm": {
        "paper": dict(offspring=16, survivors="8,4,2,1", stage_tokens="1024,2048,4096,8192",
                      finetune_tokens="10000,50000,100000,200000", finetune_lr=1e-5, iterations=200, num_sequences=16,
                      seq_len=4096, micro_batch=1, proxy="kl"),
        "quick": dict(offspring=4, survivors="2,1", stage_tokens="256,512", finetune_tokens="512,1024",
                      finetune_lr=1e-5, iterations=8, num_sequences=16, seq_len=128, micro_batch=1, proxy="kl"),
    },
    # Týr-the-Pruner (see docs/tyr.md). paper: the official example script's settings (Llama-2-7B); quick: sized
    # for the default model on a small CPU machine. `iterations` is generations per round.
    "tyr": {
        "paper": dict(offspring=128, survivors="16,4,2", stage_tokens="2048,16384,131072", iterations=50, rounds=4,
                      supernet_levels=9, level_step=0.125, num_sequences=32, seq_len=4096, micro_batch=1, proxy="kl"),
        "quick": dict(offspring=8, survivors="2,1", stage_tokens="256,1024", iterations=6, rounds=3,
                      supernet_levels=9, level_step=0.125, num_sequences=16, seq_len=128, micro_batch=1, proxy="kl"),
    },
}


def strategy_names() -> tuple[str, ...]:
    """Every selectable strategy, built-in ones first, then registered ones in registration order."""
    return tuple(STRATEGY_HELP)


def strategy_help() -> str:
    return ", ".join(f"{name} ({text})" for name, text in STRATEGY_HELP.items())


def strategy_presets(name: str) -> dict[str, dict]:
    """What each `--preset` sets for strategy `name` on top of the search's presets ({} if nothing)."""
    return STRATEGY_PRESETS.get(name, {})


def register_strategy(name: str, cls: "type[Strategy] | str", help: str,  # noqa: A002
                      presets: dict[str, dict] | None = None) -> None:
    """Make `cls` (a `Strategy` subclass, e.g. a `SearchStrategy` or a `LevelSearch`, or its "module:Class"
    path) the strategy `name`; `presets` maps a preset name to the options it sets for this strategy."""
    if not isinstance(cls, str):
        from tracenas.search.strategies.base import Strategy

        if not (isinstance(cls, type) and issubclass(cls, Strategy)):
            raise TracenasError(f"strategy {name!r}: {cls!r} is not a search strategy (a Strategy subclass)")
    STRATEGY_HELP[name] = help
    _CLASSES[name] = cls
    if presets is not None:
        STRATEGY_PRESETS[name] = presets


def strategy_class(name: str) -> "type[Strategy]":
    if name not in _CLASSES:
        raise TracenasError(f"unknown strategy {name!r}; choose from {', '.join(strategy_names())}")
    cls = _CLASSES[name]
    if isinstance(cls, str):
        module, _, attr = cls.partition(":")
        cls = _CLASSES[name] = getattr(importlib.import_module(module), attr)
    return cls


__all__ = ["STRATEGY_HELP", "STRATEGY_PRESETS", "register_strategy", "strategy_class", "strategy_help",
           "strategy_names", "strategy_presets"]
