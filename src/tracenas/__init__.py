"""tracenas: training-free structured pruning of causal LMs scored by gradient-trace alignment."""

from __future__ import annotations

__version__ = "0.1.0"
