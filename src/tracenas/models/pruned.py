"""Load a checkpoint that `tracenas export` wrote (uniform or with per-layer sizes), with one-line errors.

    from tracenas.models.pruned import load_pruned      # also `tracenas.load_pruned`
    model = load_pruned("runs/demo/model", dtype="bfloat16", device="cuda")
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tracenas.device import to_torch_dtype
from tracenas.errors import TracenasError
from tracenas.models.adapter import adapter_class_for
from tracenas.models.remote import modeling_tracenas as remote


def load_pruned(path: str | os.PathLike, dtype: str | torch.dtype | None = None, device: str | torch.device = "cpu",
                *, attn_implementation: str | None = None) -> nn.Module:
    """Load an exported checkpoint (uniform or not) in eval mode; `dtype=None` keeps the stored dtype."""
    from transformers import AutoConfig

    path = Path(path)
    if not (path / "config.json").is_file():
        raise TracenasError(f"{path} is not an exported model directory (no config.json)")
    try:
        config = AutoConfig.from_pretrained(str(path))
    except (OSError, ValueError) as err:
        raise TracenasError(f"cannot read {path / 'config.json'}: {str(err).splitlines()[0]}") from err
    cls = _model_class(config)
    kwargs: dict[str, Any] = {"dtype": to_torch_dtype(dtype) if dtype is not None else "auto"}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = cls.from_pretrained(str(path), config=config, **kwargs)
    except (OSError, RuntimeError, ValueError) as err:
        raise TracenasError(f"cannot load {path}: {str(err).splitlines()[0]}") from err
    return model.to(device).eval()


def is_uniform(config) -> bool:
    """Whether every block has the same sizes (the per-layer lists in `config.tracenas` are constant) and
    none lacks a sub-block: then the stock class loads it."""
    return remote.is_uniform_fields(getattr(config, "tracenas", None) or {})


def _model_class(config) -> type:
    """The stock class for a uniform checkpoint (so it re-saves as a stock one: no `auto_map`, no remote
    file), else `Tracenas<StockClass>`, which re-saves with its modeling file."""
    import transformers

    stock = adapter_class_for(config.model_type).stock_class  # one-line error if unsupported
    return getattr(transformers, stock) if is_uniform(config) else remote.pruned_class(stock)


__all__ = ["is_uniform", "load_pruned"]
