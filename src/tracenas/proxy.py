"""Gradient traces and candidate scores: the TraceNAS proxy Φ and the alternatives it is compared with.

    probes = TraceProbes(model, adapter, rank=64, seed=0)       # y = Wx + B(Ax), A fixed, B = 0
    base = probes.trace(batches)                                # g_base, once
    scorer = Scorer(model, adapter, space, importance, batches, probes, base, proxy="phi")
    phi, info = scorer.score(genome)                            # masks applied in place and restored

A trace is the gradient of the calibration loss w.r.t. every probe's B, averaged over the calibration
batches: `dL/dB = G (A x)ᵀ`, the full weight gradient projected on A. A's own gradient is zero at B = 0
and is never part of a trace. Φ = Σ over kept blocks of r_attn·ρ_attn + r_mlp·ρ_mlp, where ρ is the
Pearson correlation of the concatenated (q,k,v,o) or (gate,up,down) traces of candidate vs base.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from tracenas.arch import Genome, SearchSpace
from tracenas.masking import Importance, LayerSelection, head_rows, masked, select
from tracenas.models.adapter import ATTN_PROJ, MLP_PROJ, ModelAdapter
from tracenas.proxy_names import PROXY_HELP, add_proxy_name, proxy_names

log = logging.getLogger(__name__)

GRADIENT_PROXIES = ("phi", "pearson", "cosine", "dot", "gradnorm")
# Every selectable name (the zero-cost ones are implemented in tracenas.zero_cost, imported at the end);
# register_proxy keeps it in step with the torch-free registry the CLI reads.
PROXIES = proxy_names()

Traces = dict[tuple[int, str], torch.Tensor]

# Forward-only / other proxies registered by name: fn(model, adapter, batches, genome, scorer) -> float,
# evaluated with the candidate's masks applied (see `register_proxy`).
CUSTOM_PROXIES: dict[str, Callable] = {}
CUSTOM_PREPARE: dict[str, Callable] = {}


def register_proxy(name: str, fn: Callable, help: str | None = None,  # noqa: A002
                   prepare: Callable | None = None) -> None:
    """Make a proxy selectable by name everywhere (`--proxy NAME`, validate-proxy).

    `help` describes it; it may be left out only for the built-in names of `tracenas.proxy_names`.
    `prepare(scorer)`, if given, runs once on the unmasked model when a `Scorer` for it is built.
    """
    global PROXIES
    if help is None and name not in PROXY_HELP:
        raise ValueError(f"register_proxy({name!r}) needs a help text")
    CUSTOM_PROXIES[name] = fn
    if prepare is not None:
        CUSTOM_PREPARE[name] = prepare
    add_proxy_name(name, PROXY_HELP[name] if help is None else help)
    PROXIES = proxy_names()


def available_proxies() -> tuple[str, ...]:
    return PROXIES


class TraceProbes:
    """LoRA-style probes on the seven projections of every block, implemented as forward hooks.

    Hooks (rather than wrapping modules) leave the model's module tree untouched, so masking and
    slicing code see the plain model. `A` is drawn once per module from a seeded generator, so the
    base and every candidate are projected on the same subspace.
    """

    def __init__(self, model: nn.Module, adapter: ModelAdapter, rank: int = 64, seed: int = 0):
        self.model, self.adapter, self.rank = model, adapter, rank
        self.A: dict[tuple[int, str], torch.Tensor] = {}
        self.B: dict[tuple[int, str], nn.Parameter] = {}
        self.in_mask: dict[tuple[int, str], torch.Tensor | None] = {}
        self._handles = []
        gen = torch.Generator().manual_seed(seed)
        for i, layer in enumerate(adapter.layers()):
            for name, lin in adapter.projections(layer).items():
                key = (i, name)
                w = lin.weight
                a = torch.randn(rank, lin.in_features, generator=gen) / math.sqrt(lin.in_features)
                self.A[key] = a.to(device=w.device, dtype=w.dtype)
                self.B[key] = nn.Parameter(torch.zeros(lin.out_features, rank, device=w.device, dtype=w.dtype))
                self.in_mask[key] = None
                self._handles.append(lin.register_forward_hook(self._hook(key)))

    def _hook(self, key):
        def hook(_mod, args, output):
            x = args[0]
            mask = self.in_mask[key]
            if mask is not None:
                x = x * mask
            return output + (x @ self.A[key].T) @ self.B[key].T
        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def set_selection(self, selection: list[LayerSelection] | None, head_dim: int, num_heads: int) -> None:
        """Mask the o_proj probe input of removed heads, so the probe sees what the sliced model sees."""
        for key in self.in_mask:
            self.in_mask[key] = None
        if selection is None:
            return
        for i, sel in enumerate(selection):
            if sel.keep and len(sel.heads) < num_heads:
                A = self.A[(i, "o_proj")]
                m = torch.zeros(num_heads * head_dim, device=A.device, dtype=A.dtype)
                m[head_rows(sel.heads, head_dim).to(A.device)] = 1
                self.in_mask[(i, "o_proj")] = m

    def trace(self, batches: torch.Tensor, micro_batch: int = 1, loss_chunk: int = 1024,
              active_layers: set[int] | None = None) -> tuple[Traces, float]:
        """Average dL/dB over `batches` (`[N, L]` token ids). Returns (traces, mean loss)."""
        device = next(self.model.parameters()).device
        requires = {p: p.requires_grad for p in self.model.parameters()}
        for p in self.model.parameters():
            p.requires_grad_(False)
        for b in self.B.values():
            b.grad = None
            b.requires_grad_(True)
        n = batches.shape[0]
        total_loss = 0.0
        try:
            for start in range(0, n, micro_batch):
                ids = batches[start:start + micro_batch].to(device)
                loss = causal_lm_loss(self.adapter, ids, chunk=loss_chunk)
                (loss * ids.shape[0] / n).backward()
                total_loss += float(loss.detach()) * ids.shape[0] / n
        finally:
            for p, r in requires.items():
                p.requires_grad_(r)
        out: Traces = {}
        for key, b in self.B.items():
            if active_layers is not None and key[0] not in active_layers:
                continue
            out[key] = (b.grad.detach().float().clone() if b.grad is not None
                        else torch.zeros_like(b, dtype=torch.float32))
            b.grad = None
        for b in self.B.values():
            b.requires_grad_(False)
        return out, total_loss


def causal_lm_loss(adapter: ModelAdapter, ids: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Mean next-token cross-entropy without materializing the full `[B, L, V]` logits.

    The lm_head + cross-entropy run per chunk of positions under activation checkpointing, so only
    one chunk of logits exists at a time, in the forward and in the backward pass.
    """
    hidden = adapter.final_hidden(ids)[:, :-1]
    targets = ids[:, 1:]
    head = adapter.lm_head()
    total = hidden.new_zeros((), dtype=torch.float32)

    def chunk_loss(h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        logits = head(h).float()
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), t.reshape(-1), reduction="sum")

    length = hidden.shape[1]
    for s in range(0, length, chunk):
        h, t = hidden[:, s:s + chunk], targets[:, s:s + chunk]
        if h.requires_grad:
            total = total + checkpoint(chunk_loss, h, t, use_reentrant=False)
        else:
            total = total + chunk_loss(h, t)
    return total / targets.numel()


def _flat(traces: Traces, layer: int, names: tuple[str, ...]) -> torch.Tensor:
    return torch.cat([traces[(layer, n)].flatten() for n in names]).double()


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a - a.mean(), b - b.mean()
    denom = a.norm() * b.norm()
    return float((a @ b) / denom) if denom > 0 else 0.0


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    denom = a.norm() * b.norm()
    return float((a @ b) / denom) if denom > 0 else 0.0


SIMILARITY: dict[str, Callable[[torch.Tensor, torch.Tensor], float]] = {
    "phi": pearson, "pearson": pearson, "cosine": cosine, "dot": lambda a, b: float(a @ b),
}


@dataclass
class TraceScore:
    score: float
    rho_attn: list[float | None] = field(default_factory=list)
    rho_mlp: list[float | None] = field(default_factory=list)


def trace_score(proxy: str, cand: Traces, base: Traces, genome: Genome) -> TraceScore:
    """Aggregate per-sub-block similarities of candidate vs base traces into one score."""
    if proxy == "gradnorm":
        sq = sum(float(t.double().pow(2).sum()) for (i, _), t in cand.items() if genome.keep[i])
        return TraceScore(math.sqrt(sq))
    sim = SIMILARITY[proxy]
    weighted = proxy != "pearson"
    total, ra, rm = 0.0, [], []
    for i, keep in enumerate(genome.keep):
        if not keep:
            ra.append(None)
            rm.append(None)
            continue
        rho_a = sim(_flat(cand, i, ATTN_PROJ), _flat(base, i, ATTN_PROJ))
        rho_m = sim(_flat(cand, i, MLP_PROJ), _flat(base, i, MLP_PROJ))
        ra.append(rho_a)
        rm.append(rho_m)
        wa, wm = (genome.attn[i], genome.mlp[i]) if weighted else (1.0, 1.0)
        total += wa * rho_a + wm * rho_m
    return TraceScore(total, ra, rm)


@dataclass
class Scorer:
    """Scores genomes with one proxy on a fixed calibration set; the model is restored after each call."""

    model: nn.Module
    adapter: ModelAdapter
    space: SearchSpace
    importance: Importance
    batches: torch.Tensor
    proxy: str = "phi"
    probes: TraceProbes | None = None
    base_traces: Traces | None = None
    micro_batch: int = 1
    loss_chunk: int = 1024

    def __post_init__(self) -> None:
        if self.proxy not in PROXIES and self.proxy not in CUSTOM_PROXIES:
            raise ValueError(f"unknown proxy {self.proxy!r}; choose from {', '.join(PROXIES)}")
        if self.proxy in GRADIENT_PROXIES and self.probes is None:
            raise ValueError(f"proxy {self.proxy!r} needs TraceProbes")
        if self.proxy in SIMILARITY and self.base_traces is None:
            raise ValueError(f"proxy {self.proxy!r} needs base traces")
        if self.proxy in CUSTOM_PREPARE:
            CUSTOM_PREPARE[self.proxy](self)

    def score(self, genome: Genome) -> tuple[float, dict]:
        """Return (score, info). A non-finite loss or trace gives -inf with a warning."""
        t0 = time.perf_counter()
        if self.proxy == "params":
            return float(self.space.params(genome)), {"seconds": time.perf_counter() - t0}
        selection = select(self.space, genome, self.importance)
        shape = self.space.shape
        with masked(self.model, self.adapter, selection):
            if self.proxy in CUSTOM_PROXIES:
                value, loss = float(CUSTOM_PROXIES[self.proxy](self.model, self.adapter, self.batches, genome, self)), None
                info = {}
            elif self.proxy == "synflow":
                value, loss = synflow(self.model, self.adapter, self.batches[:1], genome), float("nan")
                info = {}
            else:
                self.probes.set_selection(selection, shape.head_dim, shape.num_heads)
                try:
                    active = {i for i, k in enumerate(genome.keep) if k}
                    traces, loss = self.probes.trace(self.batches, self.micro_batch, self.loss_chunk, active)
                finally:
                    self.probes.set_selection(None, shape.head_dim, shape.num_heads)
                finite = math.isfinite(loss) and all(torch.isfinite(t).all() for t in traces.values())
                if not finite:
                    log.warning("non-finite loss or gradient for candidate %s: scored -inf", genome.key()[:40])
                    return float("-inf"), {"loss": loss, "seconds": time.perf_counter() - t0}
                ts = trace_score(self.proxy, traces, self.base_traces, genome)
                value = ts.score
                info = {"rho_attn": ts.rho_attn, "rho_mlp": ts.rho_mlp}
        info.update({"loss": loss, "seconds": time.perf_counter() - t0})
        if not math.isfinite(value):
            log.warning("non-finite score for candidate %s: scored -inf", genome.key()[:40])
            value = float("-inf")
        return value, info


def synflow(model: nn.Module, adapter: ModelAdapter, ids: torch.Tensor, genome: Genome) -> float:
    """SynFlow-style saliency of the kept blocks' projections, with weights replaced by |W|."""
    lins = [lin for i, layer in enumerate(adapter.layers()) if genome.keep[i]
            for lin in adapter.projections(layer).values()]
    originals = [lin.weight.data.clone() for lin in lins]
    requires = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        for lin in lins:
            lin.weight.data.abs_()
            lin.weight.requires_grad_(True)
            lin.weight.grad = None
        device = next(model.parameters()).device
        out = adapter.final_hidden(ids.to(device)).double().sum()
        out.backward()
        total = sum(float((lin.weight.data * lin.weight.grad).abs().double().sum()) for lin in lins)
    finally:
        for lin, w in zip(lins, originals):
            lin.weight.data.copy_(w)
            lin.weight.grad = None
        for p, r in requires.items():
            p.requires_grad_(r)
    return total


# The zero-cost proxies of the validation study register themselves on import (after the names above exist).
from tracenas import zero_cost  # noqa: E402,F401
