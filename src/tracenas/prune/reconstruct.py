"""Layer-wise weight reconstruction of a pruned model, and OBS (ZipLM-style) selection of what to keep.

    rec = reconstruct(model, adapter, selection, batches, inputs="dense", importance="obs")
    apply_reconstruction_(model, adapter, rec)     # kept consumer columns get the re-solved weights
    small = slice_model(model, adapter, rec.selection)

Pruning a head or an MLP channel removes an input coordinate of the projection that *consumes* it
(`o_proj` for heads, `down_proj` for channels). Instead of leaving the kept columns as they were, each
consumer is re-solved so that its output on calibration tokens matches the dense model's:

    W'_K = (W · C[:, K] + λ W_K) · (H[K, K] + λ I)⁻¹,    H = E[x xᵀ],  C = E[x_dense xᵀ]

where `x` is the consumer's input in the pruned model, `x_dense` the dense model's, and `K` the kept
coordinates. It is the least-squares fit of the dense output `W x_dense` from the kept inputs, with a ridge
term that pulls toward the original weights; λ = `damp` × the mean of H's diagonal (default 1 %). With
every coordinate kept and dense inputs, `W' = W` exactly. Without the ridge (λ = 0) and with dense inputs
it is `W · H[:, K] · H[K, K]⁻¹`, the textbook formula.

Two input regimes (`inputs`):
- `dense`: `x` is the dense model's input to the consumer (C = H): every block is solved independently,
  all in one pass over the calibration set (what a sparsity-level database stores).
- `sequential`: blocks are solved in order, each fed by the already-pruned and reconstructed blocks
  above it, with the dense model's consumer output as the target, so upstream errors are compensated
  where they can be rather than accumulating unnoticed.

The model runs block by block on captured hidden states (one block in memory at a time beyond the model
itself); Gram matrices are accumulated in float64 from float32 products, solves are float64 Cholesky.

`importance="obs"` replaces the Wanda-style selection with greedy Optimal-Brain-Surgeon removal (ZipLM):
repeatedly remove the head / channel whose removal, after the optimal update of the rest, raises the
consumer's output error least (error `tr(W_S (H⁻¹_SS)⁻¹ W_Sᵀ)`, inverse-Hessian downdate after each
removal). Under GQA the heads go one per KV group per round, so every group keeps the same number;
MLP widths stay multiples of 32 because they are prefixes of one removal order.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Iterator, Literal

import torch
from torch import nn

from tracenas.runtime.errors import TracenasError
from tracenas.prune.masking import Kept, LayerSelection, attention_kept, head_rows, mlp_kept, removed_entries
from tracenas.models.adapter import ModelAdapter
from tracenas.models.shape import ModelShape

log = logging.getLogger(__name__)

Inputs = Literal["dense", "sequential"]
Importance = Literal["wanda", "obs"]
INPUTS: tuple[str, ...] = ("dense", "sequential")
IMPORTANCES: tuple[str, ...] = ("wanda", "obs")
DEFAULT_DAMP = 0.01
DEFAULT_OBS_CHUNK = 32  # MLP channels removed per OBS step (the grid's multiple); 1 = strictly one at a time
CONSUMERS = ("o_proj", "down_proj")


@dataclass(frozen=True, kw_only=True)
class SolveSettings:
    """How kept weights are solved and on which calibration tokens (`sequences` windows of `seq_len` tokens from
    the calibration split of `data`); shared by the export's re-solve and the sparsity-level database."""

    damp: float = DEFAULT_DAMP
    sequences: int = 16
    seq_len: int = 512
    data: str | None = None
    seed: int = 0
    micro_batch: int = 4
    obs_chunk: int = DEFAULT_OBS_CHUNK


@dataclass(frozen=True)
class ReconstructSettings(SolveSettings):
    """How an export re-solves its weights: input regime and selection, plus the `SolveSettings`."""

    inputs: str = "dense"
    importance: str = "wanda"

    def __post_init__(self) -> None:
        _check_args(self.inputs, self.importance, self.damp)
        if self.obs_chunk < 1:
            raise TracenasError(f"the OBS chunk must be >= 1, got {self.obs_chunk}")
        if self.sequences < 1 or self.seq_len < 2 or self.micro_batch < 1:
            raise TracenasError("reconstruction needs >= 1 calibration sequence of >= 2 tokens and a micro-batch >= 1")

    def describe(self) -> str:
        chunk = f" (MLP channels {self.obs_chunk} per step)" if self.importance == "obs" else ""
        return (f"{self.inputs} inputs, {self.importance} selection{chunk}, damping {self.damp:g}, "
                f"{self.sequences} x {self.seq_len} calibration tokens")


# --- Gram statistics -----------------------------------------------------------------------------------
@dataclass
class Gram:
    """Running `E[x xᵀ]` of the pruned-model input, and (sequential) `E[x_dense x_denseᵀ]`, `E[x_dense xᵀ]`."""

    dim: int
    paired: bool  # False: dense regime, x is x_dense and one matrix serves all three
    tokens: int = 0
    h: torch.Tensor = field(init=False)
    h_dense: torch.Tensor | None = field(init=False, default=None)
    cross: torch.Tensor | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.h = torch.zeros(self.dim, self.dim, dtype=torch.float64)
        if self.paired:
            self.h_dense = torch.zeros_like(self.h)
            self.cross = torch.zeros_like(self.h)

    def add(self, x: torch.Tensor, x_dense: torch.Tensor | None = None) -> None:
        x = x.reshape(-1, self.dim).float()
        self.tokens += x.shape[0]
        self.h += (x.T @ x).to(self.h.device, torch.float64)
        if self.paired:
            xd = x_dense.reshape(-1, self.dim).float()
            self.h_dense += (xd.T @ xd).to(self.h.device, torch.float64)
            self.cross += (xd.T @ x).to(self.h.device, torch.float64)

    def means(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(H, H_dense, C) as expectations over the tokens seen."""
        if self.tokens == 0:
            raise TracenasError("no calibration tokens reached this layer")
        h = self.h / self.tokens
        if not self.paired:
            return h, h, h
        return h, self.h_dense / self.tokens, self.cross / self.tokens


def damping(h: torch.Tensor, damp: float) -> float:
    """λ: `damp` times the mean of H's diagonal (a tiny floor keeps an all-zero H solvable)."""
    return max(damp * float(torch.diagonal(h).mean()), 1e-12)


def solve(weight: torch.Tensor, h: torch.Tensor, cross: torch.Tensor, kept: torch.Tensor, damp: float) -> torch.Tensor:
    """`(W · C[:, K] + λ W_K) · (H[K, K] + λI)⁻¹` in float64: the re-solved kept columns of a consumer."""
    w = weight.detach().to(torch.float64).cpu()
    lam = damping(h, damp)
    a = h[kept][:, kept] + lam * torch.eye(len(kept), dtype=torch.float64)
    b = w @ cross[:, kept] + lam * w[:, kept]
    chol = torch.linalg.cholesky(a)
    return torch.cholesky_solve(b.T, chol).T


def output_error(weight: torch.Tensor, grams: tuple[torch.Tensor, torch.Tensor, torch.Tensor], kept: torch.Tensor,
                 new: torch.Tensor | None = None) -> float:
    """`E‖W x_dense − V x_K‖² / E‖W x_dense‖²` for V = `new` (or the unchanged kept columns)."""
    h, hd, c = grams
    w = weight.detach().to(torch.float64).cpu()
    v = w[:, kept] if new is None else new.to(torch.float64)
    ref = torch.einsum("ij,jk,ik->", w, hd, w)
    err = ref - 2 * torch.einsum("ij,jk,ik->", w, c[:, kept], v) + torch.einsum("ij,jk,ik->", v, h[kept][:, kept], v)
    return float(err / ref) if ref > 0 else 0.0


# --- OBS selection -------------------------------------------------------------------------------------
def obs_order(weight: torch.Tensor, h: torch.Tensor, units: list[list[int]], damp: float,
              rounds: list[list[int]] | None = None, stop: int = 0) -> list[int]:
    """Greedy OBS removal order of `units` (each a list of input columns of `weight`).

    Removes until `stop` units remain. `rounds` (GQA) partitions the units into groups that each lose
    one unit per round, so counts stay equal across groups after every full round.
    """
    w = weight.detach().to(torch.float64).cpu().clone()
    hinv = torch.cholesky_inverse(torch.linalg.cholesky(h + damping(h, damp) * torch.eye(h.shape[0], dtype=h.dtype)))
    alive = list(range(len(units)))
    order: list[int] = []
    group_of = {u: g for g, members in enumerate(rounds or [alive]) for u in members}
    visited: set[int] = set()
    while len(alive) > stop:
        if rounds is not None and len(visited) == len(rounds):
            visited = set()
        best, best_err = None, None
        for u in alive:
            if rounds is not None and group_of[u] in visited:
                continue
            cols = units[u]
            ws = w[:, cols]
            err = float(torch.einsum("ij,jk,ik->", ws, torch.linalg.inv(hinv[cols][:, cols]), ws))
            if best_err is None or err < best_err:
                best, best_err = u, err
        cols = units[best]
        inv_ss = torch.linalg.inv(hinv[cols][:, cols])
        w -= w[:, cols] @ inv_ss @ hinv[cols, :]
        hinv -= hinv[:, cols] @ inv_ss @ hinv[cols, :]
        w[:, cols] = 0
        hinv[cols, :] = 0
        hinv[:, cols] = 0
        hinv[cols, cols] = 1.0  # keeps the removed block inert (never selected again)
        alive.remove(best)
        order.append(best)
        visited.add(group_of[best])
    return order


def obs_channel_order(weight: torch.Tensor, h: torch.Tensor, damp: float, stop: int = 0, chunk: int = 1) -> list[int]:
    """Greedy OBS removal order of single input columns (MLP channels), fast path of `obs_order`.

    `chunk` > 1 removes that many columns per step: the `chunk` cheapest by their single-column error, then
    one joint OBS update for all of them (fewer, larger updates: much faster for wide MLPs, slightly less
    greedy). The order is still one sequence, so every width is a prefix of it.
    """
    w = weight.detach().to(torch.float64).cpu().clone()
    n = h.shape[0]
    hinv = torch.cholesky_inverse(torch.linalg.cholesky(h + damping(h, damp) * torch.eye(n, dtype=h.dtype)))
    alive = torch.ones(n, dtype=torch.bool)
    order: list[int] = []
    while len(order) < n - stop:
        err = torch.linalg.vector_norm(w, dim=0).square_().div_(torch.diagonal(hinv).clamp_min(1e-30))
        err[~alive] = float("inf")
        take = min(chunk, n - stop - len(order))
        if take == 1:
            j = int(torch.argmin(err))
            row = hinv[j].clone()
            pivot = float(row[j])
            w.addr_(w[:, j].clone(), row, alpha=-1.0 / pivot)  # rank-1 updates in place: one pass each
            hinv.addr_(row, row, alpha=-1.0 / pivot)  # hinv is symmetric: column j equals row j
            cols = [j]
        else:
            cols = torch.topk(err, take, largest=False).indices.sort().values.tolist()
            rows = hinv[cols]  # [take, n]
            inv_ss = torch.linalg.inv(rows[:, cols])
            w -= (w[:, cols] @ inv_ss) @ rows
            hinv -= rows.T @ (inv_ss @ rows)
        w[:, cols] = 0
        hinv[cols, cols] = 1.0  # removed: inert, never chosen again
        alive[cols] = False
        order.extend(cols)
    return order


def head_units(shape: ModelShape) -> tuple[list[list[int]], list[list[int]] | None]:
    """Each query head's `o_proj` columns, and under GQA the heads of each KV group."""
    units = [head_rows([h], shape.head_dim).tolist() for h in range(shape.num_heads)]
    if not shape.is_gqa:
        return units, None
    return units, [list(range(g * shape.group_size, (g + 1) * shape.group_size)) for g in range(shape.num_kv_heads)]


def kept_by_order(order: list[int], total: int, keep: int) -> tuple[int, ...]:
    """The units left when the first `total - keep` of `order` are removed, sorted."""
    gone = set(order[: total - keep])
    return tuple(u for u in range(total) if u not in gone)


def obs_heads(weight: torch.Tensor, h: torch.Tensor, shape: ModelShape, keep: int, damp: float) -> tuple[int, ...]:
    units, rounds = head_units(shape)
    order = obs_order(weight, h, units, damp, rounds, stop=keep)
    return kept_by_order(order, shape.num_heads, keep)


# --- block-by-block execution --------------------------------------------------------------------------
class _Stop(Exception):
    """Raised by a hook to end a forward pass early."""


@dataclass
class BlockInputs:
    """The hidden states entering one block, per micro-batch, and the keyword arguments blocks receive."""

    states: list[torch.Tensor]
    kwargs: list[dict]


@torch.no_grad()
def capture_block_inputs(adapter: ModelAdapter, batches: torch.Tensor, micro_batch: int) -> BlockInputs:
    """Run the embeddings (and whatever precedes block 0) and keep what block 0 receives."""
    first = adapter.layers()[0]
    states, kwargs = [], []

    def grab(_mod, args, kw):
        hidden = args[0] if args else kw.pop("hidden_states")
        states.append(hidden.detach())
        kwargs.append({k: v for k, v in kw.items() if k not in ("hidden_states",)} | {"use_cache": False})
        raise _Stop

    hook = first.register_forward_pre_hook(grab, with_kwargs=True)
    device = next(adapter.model.parameters()).device
    try:
        for start in range(0, batches.shape[0], micro_batch):
            try:
                adapter.final_hidden(batches[start:start + micro_batch].to(device))
            except _Stop:
                pass
    finally:
        hook.remove()
    return BlockInputs(states, kwargs)


def run_block(layer: nn.Module, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
    out = layer(hidden, **kwargs)
    return out[0] if isinstance(out, tuple) else out


def block_pass(adapter: ModelAdapter, layer: nn.Module, hidden: torch.Tensor, kwargs: dict,
               names: tuple[str, ...]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The block's output on `hidden`, and the inputs its projections `names` saw on the way."""
    seen: dict[str, torch.Tensor] = {}
    hooks = []
    for name in names:
        proj = adapter.attn_proj(layer, name) if name in ("q_proj", "k_proj", "v_proj", "o_proj") else \
            adapter.mlp_proj(layer, name)
        hooks.append(proj.register_forward_pre_hook(lambda _m, args, name=name: seen.__setitem__(name, args[0].detach())))
    try:
        out = run_block(layer, hidden, kwargs)
    finally:
        for hook in hooks:
            hook.remove()
    return out, seen


def consumer_input(adapter: ModelAdapter, layer: nn.Module, name: str, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
    """The input of projection `name` when `layer` runs on `hidden` (the pass stops right there)."""
    proj = adapter.attn_proj(layer, name) if name == "o_proj" else adapter.mlp_proj(layer, name)
    seen: list[torch.Tensor] = []

    def grab(_mod, args):
        seen.append(args[0].detach())
        raise _Stop

    hook = proj.register_forward_pre_hook(grab)
    try:
        run_block(layer, hidden, kwargs)
    except _Stop:
        pass
    finally:
        hook.remove()
    if not seen:
        raise TracenasError(f"block forward never reached {name}")
    return seen[0]


# --- in-place edits of one block --------------------------------------------------------------------------
def _remove_(lin: nn.Linear, kept: Kept) -> None:
    """Zero, for good, what `kept` removes from `lin` (the rule of `masking.removed_entries`)."""
    for param, dim, index in removed_entries(lin, kept):
        param.data.index_fill_(dim, index.to(param.device), 0)


def _write_columns(lin: nn.Linear, kept: torch.Tensor, values: torch.Tensor) -> None:
    """Columns `kept` := `values` (the other columns untouched)."""
    w = lin.weight.data
    w[:, kept.to(w.device)] = values.to(w.device, w.dtype)


def _set_columns(lin: nn.Linear, kept: torch.Tensor, values: torch.Tensor | None) -> None:
    """Columns `kept` := `values` (unchanged if None); every other column := 0; bias zeroed if nothing kept."""
    _remove_(lin, (None, kept))
    if values is not None and len(kept):
        _write_columns(lin, kept, values)


def prune_attention_(adapter: ModelAdapter, layer: nn.Module, shape: ModelShape, heads: tuple[int, ...],
                     o_cols: torch.Tensor | None) -> None:
    """Mask a block's attention to `heads` in place (under MHA their k/v heads too); `o_cols` (kept `o_proj`
    columns) replaces the kept ones."""
    for name, kept in attention_kept(shape, heads, heads).items():
        _remove_(adapter.attn_proj(layer, name), kept)
    if o_cols is not None:  # the other columns are already gone
        _write_columns(adapter.attn_proj(layer, "o_proj"), head_rows(heads, shape.head_dim), o_cols)


def prune_mlp_(adapter: ModelAdapter, layer: nn.Module, shape: ModelShape, channels: tuple[int, ...],
               down_cols: torch.Tensor | None) -> None:
    """Mask a block's MLP to `channels` in place; `down_cols` replaces the kept `down_proj` columns."""
    for name, kept in mlp_kept(shape, channels).items():
        _remove_(adapter.mlp_proj(layer, name), kept)
    if down_cols is not None:  # the other columns are already gone
        _write_columns(adapter.mlp_proj(layer, "down_proj"), torch.tensor(channels, dtype=torch.long), down_cols)


# --- the whole model -----------------------------------------------------------------------------------
@dataclass
class Reconstruction:
    """Re-solved consumer columns (`weights[layer][name]`: `[out, kept]`, in sorted kept order), the
    selection they belong to, and per-layer relative output errors on the calibration set."""

    selection: list[LayerSelection]
    weights: dict[int, dict[str, torch.Tensor]]
    errors: dict[int, dict[str, dict[str, float]]]
    inputs: str
    importance: str
    damp: float
    tokens: int

    def summary(self) -> dict[str, float]:
        """Mean relative output error over kept sub-blocks, before (mask only) and after reconstruction."""
        out = {}
        for name in CONSUMERS:
            vals = [e[name] for e in self.errors.values() if name in e]
            for when in ("mask", "reconstructed"):
                out[f"{name}_{when}"] = sum(v[when] for v in vals) / len(vals) if vals else 0.0
        return out


def _check_args(inputs: str, importance: str, damp: float) -> None:
    if inputs not in INPUTS:
        raise TracenasError(f"reconstruction inputs must be one of {', '.join(INPUTS)}, got {inputs!r}")
    if importance not in IMPORTANCES:
        raise TracenasError(f"importance must be one of {', '.join(IMPORTANCES)}, got {importance!r}")
    if not damp > 0:
        raise TracenasError(f"the damping fraction must be > 0, got {damp}")


@torch.no_grad()
def reconstruct(model: nn.Module, adapter: ModelAdapter, selection: list[LayerSelection], batches: torch.Tensor, *,
                inputs: str = "dense", importance: str = "wanda", damp: float = DEFAULT_DAMP,
                micro_batch: int = 1, obs_chunk: int = DEFAULT_OBS_CHUNK, progress: bool = False) -> Reconstruction:
    """Re-solve every kept consumer of a pruned `selection` on the calibration `batches` (model untouched).

    With `importance="obs"` the kept heads / channels are chosen again by OBS saliency (same counts as
    `selection`); the returned `Reconstruction.selection` is the one the weights belong to.
    """
    _check_args(inputs, importance, damp)
    shape = adapter.shape()
    if len(selection) != shape.num_layers:
        raise TracenasError(f"the selection has {len(selection)} layers but the model has {shape.num_layers}")
    layers = adapter.layers()
    first = capture_block_inputs(adapter, batches, micro_batch)
    dense_states, kwargs = first.states, first.kwargs
    pruned_states = list(dense_states) if inputs == "sequential" else None
    paired = inputs == "sequential"
    new_selection, weights, errors = [], {}, {}
    from tqdm.auto import tqdm

    for i in tqdm(range(shape.num_layers), desc=f"reconstruct ({inputs}, {importance})", disable=not progress,
                  unit="block"):
        layer, sel = layers[i], selection[i]
        if not sel.keep:
            new_selection.append(sel)
            dense_states = [run_block(layer, h, kw) for h, kw in zip(dense_states, kwargs)]
            continue
        # one pass of the dense block: both consumers' inputs and the block's output
        seen = [block_pass(adapter, layer, h, kw, CONSUMERS) for h, kw in zip(dense_states, kwargs)]
        dense_states = [out for out, _ in seen]
        dense_inputs = [x for _, x in seen]
        del seen
        work = copy.deepcopy(layer)
        weights[i], errors[i] = {}, {}
        heads, channels = sel.heads, sel.channels
        for name in CONSUMERS:
            keep_count = len(sel.heads) if name == "o_proj" else len(sel.channels)
            proj = adapter.attn_proj(layer, name) if name == "o_proj" else adapter.mlp_proj(layer, name)
            if keep_count == 0:
                kept = None
            else:
                gram = Gram(proj.in_features, paired)
                for x_d, h_p, kw in zip(dense_inputs, pruned_states or dense_inputs, kwargs):
                    # sequential: the pruned block so far (this block's attention already done) on pruned inputs
                    gram.add(consumer_input(adapter, work, name, h_p, kw) if paired else x_d[name], x_d[name])
                grams = gram.means()
                if name == "o_proj":
                    if importance == "obs":
                        heads = obs_heads(proj.weight, grams[0], shape, keep_count, damp)
                    kept = head_rows(heads, shape.head_dim)
                else:
                    if importance == "obs":
                        order = obs_channel_order(proj.weight, grams[0], damp, stop=keep_count, chunk=obs_chunk)
                        channels = kept_by_order(order, shape.intermediate_size, keep_count)
                    kept = torch.tensor(channels, dtype=torch.long)
                new = solve(proj.weight, grams[0], grams[2], kept, damp)
                weights[i][name] = new.to(torch.float32)
                errors[i][name] = {"mask": output_error(proj.weight, grams, kept),
                                   "reconstructed": output_error(proj.weight, grams, kept, new)}
            if name == "o_proj":
                prune_attention_(adapter, work, shape, heads if kept is not None else (), weights[i].get(name))
            else:
                prune_mlp_(adapter, work, shape, channels if kept is not None else (), weights[i].get(name))
        del dense_inputs
        kv = sel.kv_heads if importance == "wanda" or shape.is_gqa else tuple(heads)
        new_selection.append(LayerSelection(True, tuple(heads), tuple(kv) if heads else (), tuple(channels)))
        if paired:
            pruned_states = [run_block(work, h, kw) for h, kw in zip(pruned_states, kwargs)]
        del work
    return Reconstruction(new_selection, weights, errors, inputs, importance, damp, int(batches.numel()))


@torch.no_grad()
def apply_reconstruction_(model: nn.Module, adapter: ModelAdapter, rec: Reconstruction) -> None:
    """Write the re-solved columns into the full-size model, in place (pruned columns become 0).

    Combined with `masking.masked(model, adapter, rec.selection)` this is the pruned, reconstructed
    model; `masking.slice_model(model, adapter, rec.selection)` then exports exactly that.
    """
    shape = adapter.shape()
    layers = adapter.layers()
    for i, per_layer in rec.weights.items():
        sel = rec.selection[i]
        if "o_proj" in per_layer:
            _set_columns(adapter.attn_proj(layers[i], "o_proj"), head_rows(sel.heads, shape.head_dim),
                         per_layer["o_proj"])
        if "down_proj" in per_layer:
            _set_columns(adapter.mlp_proj(layers[i], "down_proj"), torch.tensor(sel.channels, dtype=torch.long),
                         per_layer["down_proj"])


def iter_consumers(rec: Reconstruction) -> Iterator[tuple[int, str, torch.Tensor]]:
    for i, per_layer in sorted(rec.weights.items()):
        for name, w in per_layer.items():
            yield i, name, w


def reconstruct_model_(model: nn.Module, adapter: ModelAdapter, selection: list[LayerSelection], tokenizer,
                       settings: ReconstructSettings, progress: bool = True) -> Reconstruction:
    """Calibrate on `settings`' tokens, re-solve, and write the weights into `model` (in place)."""
    from tracenas import data as data_mod

    if tokenizer is None:
        raise TracenasError("reconstruction needs the base model's tokenizer for its calibration text")
    batches = data_mod.token_batches(tokenizer, settings.data, split="calibration", num_sequences=settings.sequences,
                                     seq_len=settings.seq_len, seed=settings.seed)
    log.info("reconstruction: %s", settings.describe())
    rec = reconstruct(model, adapter, selection, batches, inputs=settings.inputs, importance=settings.importance,
                      damp=settings.damp, micro_batch=settings.micro_batch, obs_chunk=settings.obs_chunk,
                      progress=progress)
    apply_reconstruction_(model, adapter, rec)
    summary = rec.summary()
    log.info("relative output error, mask only -> reconstructed: o_proj %.4f -> %.4f, down_proj %.4f -> %.4f",
             summary["o_proj_mask"], summary["o_proj_reconstructed"], summary["down_proj_mask"],
             summary["down_proj_reconstructed"])
    return rec


__all__ = ["DEFAULT_DAMP", "IMPORTANCES", "INPUTS", "Gram", "Reconstruction", "ReconstructSettings",
           "reconstruct_model_", "apply_reconstruction_",
           "capture_block_inputs", "obs_channel_order", "obs_heads", "obs_order", "output_error", "reconstruct",
           "solve"]
