"""The proxy registry: one entry per selectable proxy, read at call time by search, validate-proxy and the CLI.

    from tracenas.proxies.registry import get_proxy, proxy_names
    proxy_names()              # ('phi', 'pearson', ..., 'kl'): the `--proxy` choices, in registration order
    get_proxy("kl").needs      # 'forward': the pass it is computed from (see NEEDS)
    get_proxy("kl").method     # its scoring object; imports tracenas.proxies.zero_cost on first use

This module imports neither torch nor transformers (the CLI builds `--proxy` from it, so `--help` stays
fast). A built-in entry names its implementation as "module:attribute", imported the first time
`method` is read, so no scoring module imports another just to register itself. Users add proxies with
`tracenas.proxies.traces.register_proxy` (or `register` here, with a method object); nothing copies the list, so
a proxy registered at any point is a valid `--proxy` and validate-proxy name from then on.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from tracenas.runtime.errors import TracenasError

# The pass a proxy's score is computed from, and the hook its method provides for the validator, which
# runs each pass once per candidate and hands the result to every proxy that needs it.
NEEDS: dict[str, str] = {
    "traces": "from_traces",   # the candidate's LoRA-B gradient traces vs the base traces
    "forward": "from_stats",   # statistics of one forward pass under the candidate's masks (tracenas.proxies.zero_cost)
    "model": "evaluate",       # its own pass: fn(model, adapter, batches, genome, scorer) under the masks
    "genome": "from_genome",   # the architecture alone, no pass and no masks
}


class UnknownProxyError(TracenasError, ValueError):
    """A proxy name that is not registered."""


@dataclass
class Proxy:
    """A registry entry. `target` is the scoring object (see `tracenas.proxies.traces.ProxyMethod`) or a
    "module:attribute" path to it, resolved on first use."""

    name: str
    help: str
    needs: str
    target: Any
    label: str | None = None  # name in validation tables and plots (default: the name)

    def __post_init__(self) -> None:
        if self.needs not in NEEDS:
            raise ValueError(f"proxy {self.name!r}: needs must be one of {', '.join(NEEDS)}, got {self.needs!r}")

    @property
    def method(self) -> Any:
        if isinstance(self.target, str):
            module, _, attr = self.target.partition(":")
            self.target = getattr(importlib.import_module(module), attr)
        hook = NEEDS[self.needs]
        if not hasattr(self.target, hook):
            raise TypeError(f"proxy {self.name!r} needs {self.needs!r}, so its method must define {hook}()")
        return self.target

    @property
    def title(self) -> str:
        return self.label or self.name


_TRACES, _PROXY, _ZC = "traces", "tracenas.proxies.traces", "tracenas.proxies.zero_cost"
# Insertion order is the order of the `--proxy` choices and of the validation tables.
_REGISTRY: dict[str, Proxy] = {p.name: p for p in (
    Proxy("phi", "sparsity-weighted Pearson correlation of LoRA-B gradient traces (TraceNAS)", _TRACES,
          f"{_PROXY}:PHI", "TraceNAS (Φ)"),
    Proxy("pearson", "unweighted sum of per-sub-block Pearson correlations (ablation)", _TRACES,
          f"{_PROXY}:PEARSON", "TraceNAS – Unweighted"),
    Proxy("cosine", "sparsity-weighted cosine similarity of traces (ablation)", _TRACES, f"{_PROXY}:COSINE",
          "TraceNAS – Cosine"),
    Proxy("dot", "sparsity-weighted dot product of traces (ablation)", _TRACES, f"{_PROXY}:DOT", "TraceNAS – Dot"),
    Proxy("params", "parameter count (#Params)", "genome", f"{_PROXY}:PARAMS", "#Params"),
    Proxy("gradnorm", "L2 norm of the candidate's trace (GradNorm)", _TRACES, f"{_PROXY}:GRADNORM", "GradNorm"),
    Proxy("synflow", "synaptic saliency sum |W * dR/dW| on |W| with R = sum of final hidden states (SynFlow)",
          "model", f"{_PROXY}:SYNFLOW", "Synaptic Saliency"),
    Proxy("naswot", "NASWOT: log-det of the Hamming kernel of MLP gate codes over calibration tokens (kept "
          "channels of kept blocks)", "forward", f"{_ZC}:NASWOT", "NASWOT"),
    Proxy("zico", "ZiCo: sum over kept projections of log sum E|g|/std(g) of per-sequence LoRA-B traces", _TRACES,
          f"{_ZC}:ZICO", "ZiCo"),
    Proxy("ppl", "calibration perplexity (forward only): score = -mean NLL", "forward", f"{_ZC}:PPL",
          "Calib. PPL (fwd)"),
    Proxy("kl", "KL(base || candidate) of next-token distributions on calibration tokens: score = -KL (base "
          "outputs cached by zero_cost.prepare_reference)", "forward", f"{_ZC}:KL", "KL to base (fwd)"),
)}


def proxy_names() -> tuple[str, ...]:
    """Every selectable proxy, built-in ones first, then registered ones in registration order."""
    return tuple(_REGISTRY)


def get_proxy(name: str) -> Proxy:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownProxyError(f"unknown proxy {name!r}; choose from {', '.join(_REGISTRY)}") from None


def register(entry: Proxy) -> Proxy:
    """Add `entry` (a new name goes last; re-registering a name replaces it in place)."""
    _REGISTRY[entry.name] = entry
    return entry


def unregister(name: str) -> None:
    """Remove a proxy (for tests and plugins that clean up after themselves)."""
    _REGISTRY.pop(name, None)


__all__ = ["NEEDS", "Proxy", "UnknownProxyError", "get_proxy", "proxy_names", "register", "unregister"]
