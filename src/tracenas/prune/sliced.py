"""Score a candidate on its kept weights only: its blocks physically sliced in place for the duration of a context.

    sel = select(space, genome, importance)
    with sliced(model, adapter, sel) as view:          # kept blocks hold sliced projections, dropped ones are skipped
        loss = causal_lm_loss(adapter, ids)            # costs what the candidate keeps, not the dense model
        view.kept[(3, "down_proj")]                    # (kept output rows, kept input columns) of a projection

`masking.masked` zeroes the pruned rows and columns and still multiplies them: a 40 % candidate costs a
full dense pass. Here every kept block's seven projections are replaced by `nn.Linear`s that hold only
the kept rows / columns (one `index_select` copy of the kept weights, no initialisation), the attention
and MLP modules are told their new sizes through the family's adapter, and everything is put back on
exit (also on error); the dense model's parameters are never written. The block modules themselves stay
in place, so hooks and wrappers on them (compiled blocks, device maps) keep working. Dropped blocks are
`SkipLayer`s, as under masks.

The sliced model computes the masked model's function exactly (tests/test_masking.py and
tests/test_sliced.py compare logits, gradient traces and `kl`; the numbers agree to float rounding,
since sums run over fewer terms). `masking.kept_indices` is the map from a `LayerSelection` to the rows and
columns every projection keeps; `TraceProbes` uses it to slice its fixed `A` and to scatter the
gradients of the kept rows back into the dense-shaped traces (pruned rows stay exactly zero).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from tracenas.prune.masking import Kept, LayerSelection, kept_indices, skipping_dropped
from tracenas.models.adapter import ModelAdapter
from tracenas.models.shape import ModelShape


def can_slice(shape: ModelShape, selection: list[LayerSelection]) -> bool:
    """Whether every kept block keeps at least one head and one channel (what `sliced` represents)."""
    return all(not s.keep or (len(s.heads) > 0 and len(s.kv_heads) > 0 and len(s.channels) > 0) for s in selection)


def take(lin: nn.Linear, rows: torch.Tensor | None, cols: torch.Tensor | None) -> nn.Linear:
    """A new `nn.Linear` holding `lin`'s kept rows / columns (its own parameters shared when nothing is cut).

    Built with `skip_init`: no random initialisation (slow on large layers) and the global RNG is untouched.
    """
    w, b = lin.weight, lin.bias
    if rows is not None:
        rows = rows.to(w.device)
        w = w.detach().index_select(0, rows)
        b = b.detach().index_select(0, rows) if b is not None else None
    if cols is not None:
        w = w.detach().index_select(1, cols.to(w.device))
    new = nn.utils.skip_init(nn.Linear, w.shape[1], w.shape[0], bias=b is not None, device="meta")
    new.weight = w if isinstance(w, nn.Parameter) else nn.Parameter(w, requires_grad=False)
    if b is not None:
        new.bias = b if isinstance(b, nn.Parameter) else nn.Parameter(b, requires_grad=False)
    return new


def compile_blocks(adapter: ModelAdapter, recompile_limit: int = 64, **options) -> None:
    """`torch.compile` every decoder block, set up for sliced candidates (`--compile`).

    Every block runs the same `forward` code, so dynamo keeps one cache for all of them, and by default it
    specialises on parameter shapes: each new width is a new graph, and after `recompile_limit` graphs
    (torch's default: 8, reached within a few candidates) dynamo silently runs eager. Here parameter shapes
    are dynamic and the limit is raised. Measured (benchmarks/compile_check.py, SmolLM2 shape, 4 blocks):
    dynamo still compiles 3-4 new graphs per candidate (guards on head counts per KV group and on size
    relations), so with sliced scoring compiling is not yet worth it (docs/scale.md); with `--score-on
    masked` shapes never change and the blocks compile once.
    """
    import torch._dynamo

    cfg = torch._dynamo.config
    cfg.force_parameter_static_shapes = False
    name = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
    setattr(cfg, name, max(getattr(cfg, name), recompile_limit))
    for layer in adapter.layers():
        layer.compile(**options)


@dataclass
class SlicedView:
    """What `sliced` changed: the kept (rows, columns) and the live sliced module of every kept projection."""

    kept: dict[tuple[int, str], Kept] = field(default_factory=dict)
    modules: dict[tuple[int, str], nn.Linear] = field(default_factory=dict)


def _scalars(module: nn.Module) -> dict:
    """A module's plain attributes (head counts, widths, ...): what the adapter's resize methods change."""
    return {k: v for k, v in vars(module).items() if not k.startswith("_") and isinstance(v, (int, float, bool))}


@contextmanager
def sliced(model: nn.Module, adapter: ModelAdapter, selection: list[LayerSelection],
           shape: ModelShape | None = None) -> Iterator[SlicedView]:
    """Physically slice the kept blocks to `selection` (dropped ones skipped) in place; restored on exit."""
    s = shape or adapter.shape()
    if not can_slice(s, selection):
        raise ValueError("sliced(): a kept block with no head or no channel; use masking.masked for it")
    view = SlicedView()
    restore: list[tuple[nn.Module, dict[str, nn.Linear], dict, dict]] = []
    with skipping_dropped(adapter, selection):
        try:
            for i, (layer, sel) in enumerate(zip(adapter.layers(), selection)):
                if not sel.keep:
                    continue
                attn, mlp = adapter.attention(layer), adapter.mlp(layer)
                originals = adapter.projections(layer)
                restore.append((layer, originals, _scalars(attn), _scalars(mlp)))
                for name, (rows, cols) in kept_indices(s, sel).items():
                    new = take(originals[name], rows, cols)
                    adapter.replace_projection(layer, name, new)
                    view.kept[(i, name)] = (rows, cols)
                    view.modules[(i, name)] = new
                adapter.set_attention_heads(layer, len(sel.heads), len(sel.kv_heads))
                adapter.set_mlp_width(layer, len(sel.channels))
            yield view
        finally:
            for layer, originals, attn_attrs, mlp_attrs in reversed(restore):
                for name, lin in originals.items():
                    adapter.replace_projection(layer, name, lin)
                for module, attrs in ((adapter.attention(layer), attn_attrs), (adapter.mlp(layer), mlp_attrs)):
                    for k, v in attrs.items():
                        setattr(module, k, v)


__all__ = ["SlicedView", "can_slice", "compile_blocks", "sliced", "take"]
