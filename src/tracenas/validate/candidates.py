"""`sample_candidates`: the genomes of the study, drawn once in the budget window (width / depth / mixed)."""

from __future__ import annotations

import logging

import numpy as np

from tracenas.arch import Genome, SearchSpace
from tracenas.validate.config import FAMILIES

log = logging.getLogger("tracenas.validate")  # one logger for the package: log lines name it as before the split


def sample_candidates(space: SearchSpace, budget: int, n: int, seed: int = 0, tolerance: float = 0.02,
                      max_tries: int = 500) -> list[tuple[Genome, str]]:
    """`n` distinct genomes in the budget window `[C*(1-tol), C]`, cycling width / depth / mixed.

    Candidate i depends only on (seed, i) and the candidates before it, so a larger `n` extends a
    smaller sample. Widths are random then rescaled into the window by the search's repair.
    """
    from tracenas.search.strategies.operators import BudgetRepair

    repair = BudgetRepair(space, budget, tolerance)
    layers, lmin = space.shape.num_layers, space.min_layers
    out: list[tuple[Genome, str]] = []
    seen: set[str] = set()
    for i in range(n):
        family = FAMILIES[i % 3]
        rng = np.random.default_rng([seed, i])
        for _ in range(max_tries):
            if family == "width":
                keep_n, lo = layers, 0.2
            elif family == "depth":
                keep_n, lo = int(rng.integers(lmin, lmin + max(1, (layers - lmin) // 2) + 1)), 0.85
            else:
                keep_n, lo = layers - int(rng.integers(1, max(1, (layers - lmin) // 2) + 1)), 0.3
            keep_n = max(lmin, min(layers, keep_n))
            kept = set(rng.choice(layers, size=keep_n, replace=False).tolist())
            keep = tuple(j in kept for j in range(layers))
            attn = tuple(float(x) for x in rng.uniform(lo, 1.0, layers))
            mlp = tuple(float(x) for x in rng.uniform(lo, 1.0, layers))
            g = repair(Genome(keep, attn, mlp))
            if g is not None and g.key() not in seen:
                seen.add(g.key())
                out.append((g, family))
                break
        else:
            log.warning("could not draw a new %s candidate #%d in the budget window; stopping at %d", family, i, len(out))
            break
    return out
