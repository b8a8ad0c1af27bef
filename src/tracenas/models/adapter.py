"""Model adapters: the only place that knows where a decoder keeps its projections, and the registry of families.

Everything else in tracenas (masking, slicing, proxies, export) talks to a `ModelAdapter`. The base class
here describes the Llama module layout (`model.model.layers[i].self_attn.{q,k,v,o}_proj`,
`.mlp.{gate,up,down}_proj`); each family is one small file in `tracenas/models/families/` that subclasses
it, names its `model_type`s and stock transformers class, overrides what differs, and registers itself
with `@register_adapter`. Adding a family = one file there + its tests.
"""

from __future__ import annotations

import torch
from torch import nn

from tracenas.models.shape import ModelShape
from tracenas.runtime.errors import UnsupportedModelError

ATTN_PROJ = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_PROJ = ("gate_proj", "up_proj", "down_proj")


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class ModelAdapter:
    """Accessors for a Llama-layout decoder-only causal LM; a family's file overrides what differs."""

    family = "llama"
    model_types: tuple[str, ...] = ("llama",)
    stock_class = "LlamaForCausalLM"  # the transformers class a uniform export loads as

    def __init__(self, model: nn.Module):
        self.model = model

    # --- structure -------------------------------------------------------------------------
    def decoder(self) -> nn.Module:
        return self.model.model

    def layers(self) -> nn.ModuleList:
        return self.decoder().layers

    def attention(self, layer: nn.Module) -> nn.Module:
        return layer.self_attn

    def mlp(self, layer: nn.Module) -> nn.Module:
        return layer.mlp

    def attn_proj(self, layer: nn.Module, name: str) -> nn.Linear:
        return getattr(self.attention(layer), name)

    def mlp_proj(self, layer: nn.Module, name: str) -> nn.Linear:
        return getattr(self.mlp(layer), name)

    def projections(self, layer: nn.Module) -> dict[str, nn.Linear]:
        """The projections of a block keyed by their short name (seven, fewer where a sub-block was removed)."""
        out = {n: self.attn_proj(layer, n) for n in ATTN_PROJ} if self.has_attention(layer) else {}
        if self.has_mlp(layer):
            out.update({n: self.mlp_proj(layer, n) for n in MLP_PROJ})
        return out

    def has_attention(self, layer: nn.Module) -> bool:
        """False once `remove_attention` took the block's attention out."""
        from tracenas.models.remote.modeling_tracenas import NoAttention

        return not isinstance(self.attention(layer), NoAttention)

    def has_mlp(self, layer: nn.Module) -> bool:
        """False once `remove_mlp` took the block's MLP out."""
        from tracenas.models.remote.modeling_tracenas import NoMLP

        return not isinstance(self.mlp(layer), NoMLP)

    def final_hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Last hidden state (after the final norm), without computing logits."""
        out = self.decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return out.last_hidden_state

    def lm_head(self) -> nn.Linear:
        return self.model.lm_head

    def attn_norm(self, layer: nn.Module) -> nn.Module:
        """The norm in front of the attention sub-block (removed with it)."""
        return layer.input_layernorm

    def mlp_norm(self, layer: nn.Module) -> nn.Module:
        """The norm in front of the MLP sub-block (removed with it)."""
        return layer.post_attention_layernorm

    # --- resizing (physical slicing) -----------------------------------------------------------
    def replace_projection(self, layer: nn.Module, name: str, linear: nn.Linear) -> None:
        """Put `linear` in place of projection `name` (one of ATTN_PROJ + MLP_PROJ) of `layer`."""
        setattr(self.attention(layer) if name in ATTN_PROJ else self.mlp(layer), name, linear)

    def set_attention_heads(self, layer: nn.Module, num_heads: int, num_kv_heads: int) -> None:
        """Tell the attention module its new head counts (the stock forward reads `num_key_value_groups`)."""
        attn = self.attention(layer)
        attn.num_key_value_groups = num_heads // num_kv_heads
        for attr, value in (("num_heads", num_heads), ("num_key_value_heads", num_kv_heads)):
            if hasattr(attn, attr):
                setattr(attn, attr, value)

    def set_mlp_width(self, layer: nn.Module, width: int) -> None:
        mlp = self.mlp(layer)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = width

    def remove_attention(self, layer: nn.Module) -> None:
        """Take out the attention sub-block and its norm (no parameters left; the KV cache stays aligned)."""
        from tracenas.models.remote.modeling_tracenas import remove_attention

        remove_attention(layer, self.attention(layer).layer_idx, self.attention(layer).head_dim)

    def remove_mlp(self, layer: nn.Module) -> None:
        """Take out the MLP sub-block and its norm (no parameters left)."""
        from tracenas.models.remote.modeling_tracenas import remove_mlp

        remove_mlp(layer)

    # --- llama.cpp (GGUF export) -----------------------------------------------------------
    # The GGUF writer (tracenas.export.gguf.writer) targets llama.cpp's `deci` architecture: the Llama block (RMSNorm,
    # SiLU-gated MLP, RoPE) with its own head, KV-head and FFN sizes per layer and every projection bias optional
    # (so Qwen2's q/k/v biases and Llama's `attention_bias` are written as they are). What it cannot express:
    LLAMACPP_ROPE_TYPES = ("default", "linear", "llama3")

    def rope_parameters(self) -> dict:
        """RoPE settings (`rope_type`, `rope_theta`, `factor`, ...) from a transformers 5 or 4 config."""
        cfg = self.model.config
        params = dict(getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {})
        params.setdefault("rope_type", params.pop("type", "default"))
        params.setdefault("rope_theta", getattr(cfg, "rope_theta", 10000.0))
        return params

    def llamacpp_blocker(self) -> str | None:
        """Why llama.cpp's per-layer architecture (`deci`) cannot run this model exactly, or None if it can."""
        cfg = self.model.config
        act = getattr(cfg, "hidden_act", "silu")
        if act != "silu":
            return f"its MLP activation is {act!r}; llama.cpp's per-layer architecture (deci) runs SiLU only"
        kind = self.rope_parameters()["rope_type"]
        if kind not in self.LLAMACPP_ROPE_TYPES:
            return (f"its RoPE scaling is {kind!r}; llama.cpp's per-layer architecture (deci) takes "
                    f"{', '.join(self.LLAMACPP_ROPE_TYPES)} only")
        if any(t != "full_attention" for t in getattr(cfg, "layer_types", None) or ()):
            return "it has sliding-window attention layers; llama.cpp's per-layer architecture (deci) has none"
        return None

    # --- shape ---------------------------------------------------------------------------
    def shape(self) -> ModelShape:
        cfg = self.model.config
        layer0 = self.layers()[0]
        attn = self.attention(layer0)
        q, k, v, o = (self.attn_proj(layer0, n) for n in ATTN_PROJ)
        gate, up, down = (self.mlp_proj(layer0, n) for n in MLP_PROJ)
        num_heads = cfg.num_attention_heads
        num_kv = getattr(cfg, "num_key_value_heads", None) or num_heads
        head_dim = getattr(attn, "head_dim", None) or q.out_features // num_heads
        hidden = q.in_features

        def bias(lin: nn.Linear) -> int:
            return 0 if lin.bias is None else 1

        q_head = head_dim * hidden + head_dim * bias(q) + hidden * head_dim
        kv_head = 2 * (head_dim * hidden + head_dim * bias(k))
        channel = 2 * hidden + bias(gate) + bias(up) + hidden
        norms = _numel(layer0) - _numel(attn) - _numel(self.mlp(layer0))
        attn_norm = _numel(self.attn_norm(layer0))
        # parameters of the attention module outside its projections (Qwen3's per-head-dim q/k norms):
        # shared by all heads, so kept whatever the head count
        attn_extra = _numel(attn) - sum(_numel(p) for p in (q, k, v, o))
        attn_fixed = attn_norm + attn_extra + (o.bias.numel() if o.bias is not None else 0)
        mlp_fixed = norms - attn_norm + (down.bias.numel() if down.bias is not None else 0)
        layer_fixed = attn_fixed + mlp_fixed
        embed = self.decoder().embed_tokens.weight.numel()
        head = self.lm_head()
        emb = self.decoder().embed_tokens.weight
        # meta tensors (a model built from its config alone, `--dry-run`) all have data_ptr 0: compare objects
        tied = head.weight is emb if emb.is_meta else head.weight.data_ptr() == emb.data_ptr()
        head_params = 0 if tied else _numel(head)
        final_norm = _numel(self.decoder().norm)
        return ModelShape(
            family=self.family,
            num_layers=len(self.layers()),
            hidden_size=hidden,
            num_heads=num_heads,
            num_kv_heads=num_kv,
            head_dim=head_dim,
            intermediate_size=gate.out_features,
            vocab_size=self.decoder().embed_tokens.weight.shape[0],
            fixed_params=embed + head_params + final_norm,
            layer_fixed_params=layer_fixed,
            q_head_params=q_head,
            kv_head_params=kv_head,
            mlp_channel_params=channel,
            embedding_params=embed + head_params,
            attn_fixed_params=attn_fixed,
            mlp_fixed_params=mlp_fixed,
        )


_ADAPTERS: dict[str, type[ModelAdapter]] = {}


def register_adapter(cls: type[ModelAdapter]) -> type[ModelAdapter]:
    """Class decorator: make `cls` the adapter of each of its `model_types`."""
    for model_type in cls.model_types:
        _ADAPTERS[model_type] = cls
    return cls


def _registered() -> dict[str, type[ModelAdapter]]:
    import tracenas.models.families  # noqa: F401 - each family module registers its adapter on import

    return _ADAPTERS


def supported_families() -> tuple[str, ...]:
    """Every supported `config.model_type`."""
    return tuple(_registered())


def adapter_class_for(model_type: str) -> type[ModelAdapter]:
    """The adapter class for a `config.model_type`, or a one-line error naming the supported families."""
    adapters = _registered()
    if model_type not in adapters:
        raise UnsupportedModelError(
            f"model type {model_type!r} is not supported; supported families: {', '.join(adapters)}")
    return adapters[model_type]


def get_adapter(model: nn.Module) -> ModelAdapter:
    return adapter_class_for(getattr(model.config, "model_type", "?"))(model)
