"""Model loading and per-family adapters.

    from tracenas.models import load_model, get_adapter
    model, tokenizer, source = load_model(None)        # embedded SmolLM2-135M-Instruct (GGUF)
    adapter = get_adapter(model)                        # where q/k/v/o, gate/up/down live
"""

from __future__ import annotations

from tracenas.models.adapter import ModelAdapter, ModelShape, get_adapter, register_adapter, supported_families
from tracenas.models.loading import DEFAULT_MODEL, LoadedSource, load_model, load_tokenizer, resolve_source

__all__ = [
    "DEFAULT_MODEL",
    "LoadedSource",
    "ModelAdapter",
    "ModelShape",
    "get_adapter",
    "load_model",
    "load_tokenizer",
    "register_adapter",
    "resolve_source",
    "supported_families",
]
