"""Qwen3: the Llama layout plus RMS norms on queries and keys (`q_norm`, `k_norm`).

Those norms act on one head's `head_dim` and are shared by all heads, so removing heads leaves them whole;
`ModelAdapter.shape()` counts them with the block's fixed parameters.
"""

from __future__ import annotations

from tracenas.models.adapter import ModelAdapter, register_adapter


@register_adapter
class Qwen3Adapter(ModelAdapter):
    family = "qwen3"
    model_types = ("qwen3",)
    stock_class = "Qwen3ForCausalLM"

    def llamacpp_blocker(self) -> str | None:
        return ("Qwen3's per-head query/key RMSNorms (q_norm, k_norm) are not part of llama.cpp's per-layer "
                "architecture (deci), and llama.cpp's qwen3 architecture has one head count for all layers")
