"""Mistral: the Llama layout with GQA and an optional sliding window (which pruning does not change)."""

from __future__ import annotations

from tracenas.models.adapter import ModelAdapter, register_adapter


@register_adapter
class MistralAdapter(ModelAdapter):
    family = "mistral"
    model_types = ("mistral",)
    stock_class = "MistralForCausalLM"
