"""Model loading and per-family adapters.

    from tracenas.models import load_model, get_adapter
    model, tokenizer, source = load_model(None)        # embedded SmolLM2-135M-Instruct (GGUF)
    adapter = get_adapter(model)                        # where q/k/v/o, gate/up/down live

The names are imported on first use, so `tracenas.models.shape` (torch-free) does not pull in torch.
"""

from __future__ import annotations

from tracenas.runtime.lazy import lazy_exports

_EXPORTS = {
    "DEFAULT_MODEL": "defaults",
    "LoadedSource": "loading",
    "ModelAdapter": "adapter",
    "ModelShape": "shape",
    "get_adapter": "adapter",
    "load_model": "loading",
    "load_tokenizer": "loading",
    "register_adapter": "adapter",
    "resolve_source": "loading",
    "supported_families": "adapter",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
