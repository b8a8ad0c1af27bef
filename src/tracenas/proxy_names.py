"""Names and one-line descriptions of the search proxies: a registry that imports neither torch nor transformers.

    from tracenas.proxy_names import proxy_names
    proxy_names()   # ('phi', 'pearson', ..., 'kl'): the `--proxy` choices, in order

The CLI reads it to build `--proxy` (so `tracenas search --help` answers without loading torch) and
`SearchConfig` to validate a name. The scoring code lives in `tracenas.proxy` (gradient traces, SynFlow,
#Params) and `tracenas.zero_cost` (forward-only proxies); `tracenas.proxy.register_proxy` adds a user's
proxy here as well, so it is a valid `--proxy` from then on.
"""

from __future__ import annotations

# Insertion order is the order of the `--proxy` choices.
PROXY_HELP: dict[str, str] = {
    "phi": "sparsity-weighted Pearson correlation of LoRA-B gradient traces (TraceNAS)",
    "pearson": "unweighted sum of per-sub-block Pearson correlations (ablation)",
    "cosine": "sparsity-weighted cosine similarity of traces (ablation)",
    "dot": "sparsity-weighted dot product of traces (ablation)",
    "gradnorm": "L2 norm of the candidate's trace (GradNorm)",
    "params": "parameter count (#Params)",
    "synflow": "synaptic saliency sum |W * dR/dW| on |W| with R = sum of final hidden states (SynFlow)",
    # implemented in tracenas.zero_cost
    "naswot": "NASWOT: log-det of the Hamming kernel of MLP gate codes over calibration tokens (kept channels of "
              "kept blocks)",
    "zico": "ZiCo: sum over kept projections of log sum E|g|/std(g) of per-sequence LoRA-B traces",
    "ppl": "calibration perplexity (forward only): score = -mean NLL",
    "kl": "KL(base || candidate) of next-token distributions on calibration tokens: score = -KL (base outputs "
          "cached by zero_cost.prepare_reference)",
}


def proxy_names() -> tuple[str, ...]:
    """Every selectable proxy, built-in ones first, then registered ones in registration order."""
    return tuple(PROXY_HELP)


def add_proxy_name(name: str, help: str) -> None:  # noqa: A002 - mirrors register_proxy
    """Record a proxy's name and description (a new name goes last; a known one keeps its place)."""
    PROXY_HELP[name] = help


__all__ = ["PROXY_HELP", "add_proxy_name", "proxy_names"]
