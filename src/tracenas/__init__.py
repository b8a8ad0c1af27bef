"""tracenas: training-free structured pruning of causal LMs scored by gradient-trace alignment.

    import tracenas
    model = tracenas.load_pruned("runs/demo/model")     # an exported pruned checkpoint
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["load_pruned", "__version__"]


def __getattr__(name: str):
    # Lazy, so that `import tracenas` (and the CLI's --help) does not import torch.
    if name == "load_pruned":
        from tracenas.models.pruned import load_pruned

        return load_pruned
    raise AttributeError(f"module 'tracenas' has no attribute {name!r}")
