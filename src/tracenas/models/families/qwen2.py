"""Qwen2 / Qwen2.5: the Llama layout with q/k/v biases (sliced with their rows; counted by `shape()`)."""

from __future__ import annotations

from tracenas.models.adapter import ModelAdapter, register_adapter


@register_adapter
class Qwen2Adapter(ModelAdapter):
    family = "qwen2"
    model_types = ("qwen2",)
    stock_class = "Qwen2ForCausalLM"
