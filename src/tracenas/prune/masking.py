"""Importance, masks, in-place apply/restore, and physical slicing.

    imp = compute_importance(model, adapter, batches)          # one pass over the calibration set
    sel = select(space, genome, imp)                          # which heads / channels survive
    with masked(model, adapter, sel): loss = ...              # in place, restored exactly on exit
    small = slice_model(model, adapter, sel)                  # a physically smaller copy

Head importance: `I_j = sum_i |W_o[i, j]| * ||X_j||_2` over the input columns of `o_proj`, summed over
the head's `head_dim` columns. MLP channel importance: the same on `down_proj`'s inputs.
Removal is exact: a head is removed by zeroing its `o_proj` input columns (and its q rows; under MHA
its k/v rows too), an MLP channel by zeroing its gate/up rows and its down column. A dropped block is
replaced by a pass-through for the duration of the context. A sub-block that keeps nothing (0 heads or
0 channels) is removed: masked, its output weights (and bias) are zero; sliced, it is replaced by a
parameter-free stand-in (`ModelAdapter.remove_attention` / `remove_mlp`).
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import nn

from tracenas.arch import Genome, SearchSpace
from tracenas.models.adapter import ATTN_PROJ, MLP_PROJ, ModelAdapter
from tracenas.models.shape import ModelShape


@dataclass
class Importance:
    """Per-layer head scores `[num_heads]`, channel scores `[intermediate]`, and block-level priors."""

    heads: list[torch.Tensor]
    channels: list[torch.Tensor]

    def attn_prior(self) -> list[float]:
        """Per-layer mean head importance (the paper's I_l for the attention sub-block)."""
        return [float(h.mean()) for h in self.heads]

    def mlp_prior(self) -> list[float]:
        return [float(c.mean()) for c in self.channels]

    def state_dict(self) -> dict[str, torch.Tensor]:
        d = {f"heads.{i}": h for i, h in enumerate(self.heads)}
        d.update({f"channels.{i}": c for i, c in enumerate(self.channels)})
        return d

    @classmethod
    def from_state_dict(cls, d: dict[str, torch.Tensor]) -> "Importance":
        n = sum(k.startswith("heads.") for k in d)
        return cls([d[f"heads.{i}"] for i in range(n)], [d[f"channels.{i}"] for i in range(n)])


@torch.no_grad()
def compute_importance(model: nn.Module, adapter: ModelAdapter, batches: torch.Tensor,
                       micro_batch: int = 1) -> Importance:
    """Activation-weighted magnitude (Wanda-style) importance from one forward pass over `batches`."""
    shape = adapter.shape()
    layers = list(adapter.layers())
    sq_o = [None] * len(layers)
    sq_d = [None] * len(layers)
    hooks = []

    def make_hook(store: list, i: int):
        def hook(_mod, args):
            x = args[0].detach().float()
            s = x.pow(2).sum(dim=tuple(range(x.dim() - 1)))
            store[i] = s if store[i] is None else store[i] + s
        return hook

    for i, layer in enumerate(layers):
        hooks.append(adapter.attn_proj(layer, "o_proj").register_forward_pre_hook(make_hook(sq_o, i)))
        hooks.append(adapter.mlp_proj(layer, "down_proj").register_forward_pre_hook(make_hook(sq_d, i)))
    device = next(model.parameters()).device
    try:
        for start in range(0, batches.shape[0], micro_batch):
            adapter.final_hidden(batches[start:start + micro_batch].to(device))
    finally:
        for h in hooks:
            h.remove()
    heads, channels = [], []
    for i, layer in enumerate(layers):
        w_o = adapter.attn_proj(layer, "o_proj").weight.detach().float().abs()
        col = w_o.sum(dim=0) * sq_o[i].sqrt()
        heads.append(col.view(shape.num_heads, shape.head_dim).sum(dim=1).cpu())
        w_d = adapter.mlp_proj(layer, "down_proj").weight.detach().float().abs()
        channels.append((w_d.sum(dim=0) * sq_d[i].sqrt()).cpu())
    return Importance(heads, channels)


@dataclass(frozen=True)
class LayerSelection:
    keep: bool
    heads: tuple[int, ...]  # kept query heads (sorted)
    kv_heads: tuple[int, ...]  # kept KV heads (sorted); all of them under GQA
    channels: tuple[int, ...]  # kept MLP channels (sorted)


def top_heads(shape: ModelShape, head_scores: torch.Tensor, num_heads: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The `num_heads` best query heads (sorted) and the KV heads they need: under GQA the same number from
    every KV group (all KV heads stay, none if no head does), under MHA the heads themselves."""
    if shape.is_gqa:
        per_group = num_heads // shape.num_kv_heads
        groups = head_scores.view(shape.num_kv_heads, shape.group_size)
        heads = []
        for g in range(shape.num_kv_heads):
            top = torch.topk(groups[g], per_group, sorted=False).indices
            heads.extend(int(g * shape.group_size + t) for t in top)
        kv = tuple(range(shape.num_kv_heads)) if per_group else ()
    else:
        heads = torch.topk(head_scores, num_heads, sorted=False).indices.tolist()
        kv = tuple(sorted(heads))
    return tuple(sorted(heads)), tuple(sorted(kv))


def top_channels(channel_scores: torch.Tensor, width: int) -> tuple[int, ...]:
    """The `width` best MLP channels, sorted."""
    return tuple(sorted(torch.topk(channel_scores, width, sorted=False).indices.tolist()))


def select(space: SearchSpace, genome: Genome, importance: Importance) -> list[LayerSelection]:
    """Map a genome to the concrete heads and channels kept in every layer (top-k by importance)."""
    out = []
    for la, head_scores, chan_scores in zip(space.layer_arch(genome), importance.heads, importance.channels):
        heads, kv = top_heads(space.shape, head_scores, la.num_heads)
        out.append(LayerSelection(la.keep, heads, kv, top_channels(chan_scores, la.mlp_width)))
    return out


def complement(kept: Sequence[int] | torch.Tensor, n: int) -> torch.Tensor:
    """The indices of range(n) not in `kept` (a sequence or a tensor of indices), ascending."""
    mask = torch.ones(n, dtype=torch.bool)
    mask[torch.as_tensor(kept, dtype=torch.long)] = False
    return mask.nonzero().flatten()


def head_rows(heads, head_dim: int) -> torch.Tensor:
    """The q (or k/v) output rows of `heads`: `head_dim` consecutive rows per head, in the heads' order."""
    idx = torch.tensor(list(heads), dtype=torch.long)
    return (idx[:, None] * head_dim + torch.arange(head_dim)[None, :]).flatten()


# --- the removal rule, in one place -----------------------------------------------------------------------
# (kept output rows, kept input columns) of one projection; None = all of them
Kept = tuple[torch.Tensor | None, torch.Tensor | None]


def attention_kept(shape: ModelShape, heads: Sequence[int], kv_heads: Sequence[int]) -> dict[str, Kept]:
    """What each attention projection keeps: q rows and o columns of the kept query heads; under MHA the
    k/v rows of `kv_heads` (under GQA K/V stay whole and `kv_heads` is not read)."""
    out: dict[str, Kept] = {name: (None, None) for name in ATTN_PROJ}
    if len(heads) < shape.num_heads:
        q = head_rows(heads, shape.head_dim)
        out["q_proj"], out["o_proj"] = (q, None), (None, q)
    if not shape.is_gqa and len(kv_heads) < shape.num_kv_heads:
        kv = head_rows(kv_heads, shape.head_dim)
        out["k_proj"], out["v_proj"] = (kv, None), (kv, None)
    return out


def mlp_kept(shape: ModelShape, channels: Sequence[int]) -> dict[str, Kept]:
    """What each MLP projection keeps: gate/up rows and down columns of the kept channels."""
    out: dict[str, Kept] = {name: (None, None) for name in MLP_PROJ}
    if len(channels) < shape.intermediate_size:
        ch = torch.tensor(list(channels), dtype=torch.long)
        out["gate_proj"], out["up_proj"], out["down_proj"] = (ch, None), (ch, None), (None, ch)
    return out


def kept_indices(shape: ModelShape, sel: LayerSelection) -> dict[str, Kept]:
    """The rows and columns each of a kept block's seven projections keeps under `sel` (None: all)."""
    return {**attention_kept(shape, sel.heads, sel.kv_heads), **mlp_kept(shape, sel.channels)}


def removed_entries(lin: nn.Linear, kept: Kept) -> list[tuple[torch.Tensor, int, torch.Tensor]]:
    """`(parameter, dim, indices)` of everything `kept` removes from `lin`: the rows not kept (weight and
    bias), the columns not kept, and the whole bias when no column is kept (the sub-block is gone, so is
    its output bias). Empty index sets and absent biases are left out."""
    rows, cols = kept
    out: list[tuple[torch.Tensor | None, int, torch.Tensor]] = []
    if rows is not None:
        gone = complement(rows, lin.out_features)
        out += [(lin.weight, 0, gone), (lin.bias, 0, gone)]
    if cols is not None:
        out.append((lin.weight, 1, complement(cols, lin.in_features)))
        if len(cols) == 0:
            out.append((lin.bias, 0, torch.arange(lin.out_features)))
    return [(p, dim, idx) for p, dim, idx in out if p is not None and idx.numel()]


def projection(adapter: ModelAdapter, layer: nn.Module, name: str) -> nn.Linear:
    """One of a block's seven projections by name (`ATTN_PROJ` + `MLP_PROJ`)."""
    return adapter.attn_proj(layer, name) if name in ATTN_PROJ else adapter.mlp_proj(layer, name)


class SkipLayer(nn.Module):
    """Pass-through for a dropped block: the residual stream goes on unchanged, at no compute."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = [inner]  # a list, so the dropped block's parameters are not registered twice

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


@dataclass
class _Saved:
    param: torch.Tensor
    dim: int
    index: torch.Tensor
    values: torch.Tensor


def _zero(saved: list[_Saved], param: torch.Tensor, dim: int, index: torch.Tensor) -> None:
    index = index.to(param.device)
    saved.append(_Saved(param, dim, index, param.data.index_select(dim, index).clone()))
    param.data.index_fill_(dim, index, 0)


@contextmanager
def skipping_dropped(adapter: ModelAdapter, selection: list[LayerSelection]) -> Iterator[None]:
    """The blocks `selection` drops replaced by `SkipLayer`s for the duration; put back on exit (also on error)."""
    layers = adapter.layers()
    originals: dict[int, nn.Module] = {}
    try:
        for i, sel in enumerate(selection):
            if not sel.keep:
                originals[i] = layers[i]
                layers[i] = SkipLayer(layers[i])
        yield
    finally:
        for i, layer in originals.items():
            layers[i] = layer


@contextmanager
def masked(model: nn.Module, adapter: ModelAdapter, selection: list[LayerSelection]) -> Iterator[None]:
    """Apply a selection in place; weights are restored bit-exactly on exit (also on error)."""
    s = adapter.shape()
    saved: list[_Saved] = []
    with skipping_dropped(adapter, selection):
        try:
            for layer, sel in zip(adapter.layers(), selection):
                if sel.keep:
                    for name, kept in kept_indices(s, sel).items():
                        for param, dim, index in removed_entries(projection(adapter, layer, name), kept):
                            _zero(saved, param, dim, index)
            yield
        finally:
            for rec in reversed(saved):
                rec.param.data.index_copy_(rec.dim, rec.index, rec.values)


def _slice_linear(lin: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    w = lin.weight.data
    if rows is not None:
        w = w.index_select(0, rows.to(w.device))
    if cols is not None:
        w = w.index_select(1, cols.to(w.device))
    b = lin.bias.data if lin.bias is not None else None
    if b is not None and rows is not None:
        b = b.index_select(0, rows.to(b.device))
    new = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device=w.device, dtype=w.dtype)
    new.weight.data.copy_(w)
    if b is not None:
        new.bias.data.copy_(b)
    new.weight.requires_grad_(lin.weight.requires_grad)
    return new


def slice_layer_(adapter: ModelAdapter, layer: nn.Module, sel: LayerSelection, shape: ModelShape | None = None) -> None:
    """Physically shrink one kept block to its selection, in place (the adapter swaps the modules).

    `shape` is the unpruned model's (`adapter.shape()` by default); pass it when slicing a copy that
    already has sliced blocks.
    """
    s = shape or adapter.shape()
    if not sel.heads:
        adapter.remove_attention(layer)
    if not sel.channels:
        adapter.remove_mlp(layer)
    proj = adapter.projections(layer)  # the sub-blocks still there
    for name, (rows, cols) in kept_indices(s, sel).items():
        if name in proj and (rows is not None or cols is not None):
            adapter.replace_projection(layer, name, _slice_linear(proj[name], rows=rows, cols=cols))
    if sel.heads:
        adapter.set_attention_heads(layer, len(sel.heads), len(sel.kv_heads))
    if sel.channels:
        adapter.set_mlp_width(layer, len(sel.channels))


def pruned_config_fields(selection: list[LayerSelection]) -> dict:
    """Per-layer sizes stored in the exported config (kept blocks only, in order)."""
    kept = [(i, s) for i, s in enumerate(selection) if s.keep]
    return {
        "source_layers": [i for i, _ in kept],
        "num_attention_heads": [len(s.heads) for _, s in kept],
        "num_key_value_heads": [len(s.kv_heads) for _, s in kept],
        "intermediate_size": [len(s.channels) for _, s in kept],
    }


def slice_model(model: nn.Module, adapter: ModelAdapter, selection: list[LayerSelection]) -> nn.Module:
    """A physically smaller deep copy: dropped blocks removed (indices renumbered), kept blocks sliced.

    The copy's config gains `tracenas` = per-layer sizes (see `pruned_config_fields`) and an updated
    `num_hidden_layers` (and `layer_types` where the family has it).
    """
    shape = adapter.shape()
    new = copy.deepcopy(model)
    new_adapter = type(adapter)(new)
    old_layers = new_adapter.layers()
    kept = []
    for i, sel in enumerate(selection):
        if not sel.keep:
            continue
        layer = old_layers[i]
        slice_layer_(new_adapter, layer, sel, shape)
        kept.append(layer)
    for new_idx, layer in enumerate(kept):
        attn = new_adapter.attention(layer)
        if hasattr(attn, "layer_idx"):
            attn.layer_idx = new_idx
        if hasattr(layer, "layer_idx"):
            layer.layer_idx = new_idx
    new_adapter.decoder().layers = nn.ModuleList(kept)
    cfg = new.config
    if getattr(cfg, "layer_types", None) is not None:
        cfg.layer_types = [t for t, s in zip(cfg.layer_types, selection) if s.keep]
    cfg.num_hidden_layers = len(kept)
    fields = pruned_config_fields(selection)
    fields["base_num_hidden_layers"] = len(selection)
    cfg.tracenas = fields
    return new


def selection_to_list(selection: list[LayerSelection]) -> list[dict]:
    return [{"keep": s.keep, "heads": list(s.heads), "kv_heads": list(s.kv_heads), "channels": list(s.channels)}
            for s in selection]


def selection_from_list(data: list[dict]) -> list[LayerSelection]:
    return [LayerSelection(bool(d["keep"]), tuple(d["heads"]), tuple(d["kv_heads"]), tuple(d["channels"]))
            for d in data]
