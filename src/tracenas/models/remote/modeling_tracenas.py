"""Modeling code for tracenas-pruned checkpoints with per-layer head counts and MLP widths.

    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained("path/to/pruned", trust_remote_code=True)

This file is copied into every non-uniform checkpoint that tracenas exports, and `config.json`'s
`auto_map` points at one of the classes below. It is self-contained on purpose (it imports only torch
and transformers, never tracenas), so the checkpoint loads on a machine without tracenas installed.

How it works: the stock model of the family is built from the config, then every decoder block is
rebuilt from a copy of the config that carries that block's own sizes, read from
`config.tracenas["num_attention_heads" | "num_key_value_heads" | "intermediate_size"][i]`.
The stock attention infers its head count from the `q_proj` output size and uses
`num_key_value_groups` for GQA, so no forward code is overridden: the weights, the KV cache and
`generate()` are all stock. Dropped blocks are simply absent (block indices are already renumbered).
A block whose attention keeps 0 heads (or whose MLP keeps 0 channels) has that sub-block and its norm
replaced by `NoAttention` (`NoMLP`): no parameters, a zero contribution to the residual stream, and for
attention a one-value-per-token placeholder in the KV cache so that the cache's sequence length stays right.
Only public transformers classes are used; checked with transformers 5.17 and 5.23.

The file knows no model family: `config.json`'s `auto_map` names `Tracenas<StockClass>` (for example
`TracenasQwen2ForCausalLM`), and the module attribute of that name is made on first access as a subclass
of `transformers.<StockClass>` that resizes its blocks after the stock constructor. The class is registered
for `AutoModelForCausalLM`, so `model.save_pretrained(d)` / `push_to_hub` write this file and `auto_map` again.
"""

from __future__ import annotations

import copy

import torch
import transformers
from torch import nn

PER_LAYER_FIELDS = ("num_attention_heads", "num_key_value_heads", "intermediate_size")
PREFIX = "Tracenas"


def layer_config(config, index: int):
    """A copy of `config` with block `index`'s own head counts and MLP width."""
    fields = getattr(config, "tracenas", None) or {}
    cfg = copy.deepcopy(config)
    if not hasattr(cfg, "head_dim") or cfg.head_dim is None:
        cfg.head_dim = config.hidden_size // config.num_attention_heads
    for name in PER_LAYER_FIELDS:
        values = fields.get(name)
        if values is not None:
            setattr(cfg, name, int(values[index]))
    return cfg


class NoAttention(nn.Module):
    """A removed attention sub-block: adds nothing; keeps a 1-value-per-token placeholder in the KV cache."""

    def __init__(self, layer_idx: int, head_dim: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.head_dim = head_dim  # the model's head size, for tools that read it off every attention module

    def forward(self, hidden_states, *args, **kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache is not None:
            # a [batch, 1, seq, 1] placeholder (a tensor with no elements would read as an empty cache): the
            # cache's sequence length, which transformers reads off its layers, stays right at 4 bytes a token
            marker = hidden_states.new_zeros(*hidden_states.shape[:-2], 1, hidden_states.shape[-2], 1)
            cache.update(marker, marker.clone(), self.layer_idx)
        return torch.zeros_like(hidden_states), None


class NoMLP(nn.Module):
    """A removed MLP sub-block: adds nothing to the residual stream."""

    def forward(self, hidden_states):
        return torch.zeros_like(hidden_states)


def remove_attention(layer, layer_idx: int, head_dim: int) -> None:
    """Replace a block's attention and its input norm by parameter-free stand-ins."""
    layer.self_attn = NoAttention(layer_idx, head_dim)
    layer.input_layernorm = nn.Identity()


def remove_mlp(layer) -> None:
    """Replace a block's MLP and its post-attention norm by parameter-free stand-ins."""
    layer.mlp = NoMLP()
    layer.post_attention_layernorm = nn.Identity()


def is_uniform_fields(fields: dict) -> bool:
    """Every block the same size and none missing a sub-block: what a stock config can describe."""
    return all(len(set(fields.get(name) or [None])) == 1 and 0 not in (fields.get(name) or [])
               for name in PER_LAYER_FIELDS)


def check_per_layer_fields(config) -> None:
    fields = getattr(config, "tracenas", None) or {}
    n = config.num_hidden_layers
    for name in PER_LAYER_FIELDS:
        values = fields.get(name)
        if values is not None and len(values) != n:
            raise ValueError(
                f"config.tracenas[{name!r}] has {len(values)} entries but num_hidden_layers is {n}")
    heads, kv = fields.get("num_attention_heads"), fields.get("num_key_value_heads")
    if heads is not None and kv is not None:
        for i, (h, k) in enumerate(zip(heads, kv)):
            if (h, k) != (0, 0) and (k < 1 or h % k):
                raise ValueError(f"layer {i}: {h} query heads are not a multiple of {k} KV heads")


def resize_blocks(model) -> None:
    """Rebuild every decoder block whose sizes differ from the config's uniform ones."""
    config = model.config
    if not getattr(config, "tracenas", None):
        return
    check_per_layer_fields(config)
    layers = model.model.layers
    for i in range(len(layers)):
        cfg = layer_config(config, i)
        if all(getattr(cfg, n) == getattr(config, n) for n in PER_LAYER_FIELDS):
            continue
        no_attn, no_mlp = cfg.num_attention_heads == 0, cfg.intermediate_size == 0
        if no_attn:  # build the block with any valid head count, then take the attention out
            cfg.num_attention_heads = cfg.num_key_value_heads = 1
        if no_mlp:
            cfg.intermediate_size = 1
        layers[i] = type(layers[i])(cfg, i)
        if no_attn:
            remove_attention(layers[i], i, cfg.head_dim)
        if no_mlp:
            remove_mlp(layers[i])


class _ResizedBlocks:
    """Mixin: build the stock model, then give every block its own sizes from `config.tracenas`."""

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        resize_blocks(self)


_CLASSES: dict[str, type] = {}


def pruned_class(stock_name: str) -> type:
    """`Tracenas<stock_name>`: `transformers.<stock_name>` whose blocks take per-layer sizes (made once)."""
    if stock_name not in _CLASSES:
        stock = getattr(transformers, stock_name, None)
        if not isinstance(stock, type):
            raise AttributeError(f"transformers has no model class {stock_name!r} (a newer transformers may)")
        name = PREFIX + stock_name
        cls = type(name, (_ResizedBlocks, stock), {"__module__": __name__, "__qualname__": name})
        # `save_pretrained` / `push_to_hub` then copy this file next to the weights and write `auto_map`,
        # so a re-saved checkpoint loads like the exported one.
        cls.register_for_auto_class("AutoModelForCausalLM")
        _CLASSES[stock_name] = cls
    return _CLASSES[stock_name]


def __getattr__(name: str) -> type:
    # `from modeling_tracenas import TracenasLlamaForCausalLM`, as transformers resolves `auto_map`.
    if name.startswith(PREFIX) and name.endswith("ForCausalLM"):
        return pruned_class(name[len(PREFIX):])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
