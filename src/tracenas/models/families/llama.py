"""Llama (Llama 2/3, SmolLM2, TinyLlama...): the reference layout of `ModelAdapter`, nothing to override."""

from __future__ import annotations

from tracenas.models.adapter import ModelAdapter, register_adapter


@register_adapter
class LlamaAdapter(ModelAdapter):
    family = "llama"
    model_types = ("llama",)
    stock_class = "LlamaForCausalLM"
