"""Gradient traces and candidate scores: the TraceNAS proxy Φ and the alternatives it is compared with.

    probes = TraceProbes(model, adapter, rank=64, seed=0)       # y = Wx + B(Ax), A fixed, B = 0
    base = probes.trace(batches)                                # g_base, once
    scorer = Scorer(model, adapter, space, importance, batches, "phi", probes, base)
    phi, info = scorer.score(genome)                            # on the sliced candidate (or under masks)

A trace is the gradient of the calibration loss w.r.t. every probe's B, averaged over the calibration
batches: `dL/dB = G (A x)ᵀ`, the full weight gradient projected on A. A's own gradient is zero at B = 0
and is never part of a trace. Φ = Σ over kept blocks of r_attn·ρ_attn + r_mlp·ρ_mlp, where ρ is the
Pearson correlation of the concatenated (q,k,v,o) or (gate,up,down) traces of candidate vs base.

A candidate is scored on its physically sliced blocks (`tracenas.prune.sliced`, `Scorer(score_on="sliced")`, the
default) when its method supports it (the trace proxies, kl, ppl, naswot), so it costs what it keeps; else,
and with `score_on="masked"`, under masks on the dense model. Both give the same numbers up to float
rounding: for the traces, the probes' `A` is sliced to the kept input columns and the gradients of the
kept rows land in the dense-shaped `B.grad`, whose pruned rows stay exactly zero, as under masks.

Every proxy is a `ProxyMethod` behind an entry of `tracenas.proxies.registry` (name, help, the pass it
needs); `Scorer` and the validator dispatch through those objects. This module holds the trace proxies,
SynFlow and #Params; `tracenas.proxies.zero_cost` the forward-only ones; `register_proxy` adds yours.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from tracenas.arch import Genome, SearchSpace
from tracenas.runtime.losses import next_token_loss
from tracenas.prune.masking import Importance, LayerSelection, head_rows, masked, select
from tracenas.models.adapter import ATTN_PROJ, MLP_PROJ, ModelAdapter
from tracenas.proxies.registry import Proxy, get_proxy, proxy_names, register
from tracenas.prune.sliced import SlicedView, can_slice, sliced

log = logging.getLogger(__name__)

Traces = dict[tuple[int, str], torch.Tensor]


def register_proxy(name: str, fn: Callable, help: str | None = None,  # noqa: A002
                   prepare: Callable | None = None, *, needs: str = "model", label: str | None = None) -> None:
    """Make a proxy selectable by name everywhere (`--proxy NAME`, validate-proxy), from now on.

    `fn(model, adapter, batches, genome, scorer) -> float` is evaluated with the candidate's masks
    applied; `prepare(scorer)`, if given, runs once on the unmasked model when a `Scorer` for it is
    built. `help` describes it (it may be left out when replacing a registered name). A `ProxyMethod`
    may be passed as `fn` instead, with the `needs` whose hook it defines (tracenas.proxies.registry.NEEDS).
    """
    if help is None:
        help = get_proxy(name).help  # raises for a new name: it needs a description
    if isinstance(fn, ProxyMethod):
        if prepare is not None:
            raise ValueError("register_proxy: give a ProxyMethod its prepare() instead of prepare=")
        method = fn
    else:
        method = FunctionProxy(fn, prepare)
    register(Proxy(name, help, needs, method, label))


def available_proxies() -> tuple[str, ...]:
    """Every selectable proxy now (read from the registry at each call)."""
    return proxy_names()


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

    @contextmanager
    def attached(self, view: SlicedView) -> Iterator[None]:
        """Probe the sliced projections of `view` for the block: `A` restricted to the kept input columns, the
        kept rows of `B`, so `B.grad` gets the kept rows' gradients and exact zeros elsewhere (as under masks)."""
        handles = []
        try:
            for key, lin in view.modules.items():
                rows, cols = view.kept[key]
                a = self.A[key] if cols is None else self.A[key].index_select(1, cols.to(self.A[key].device))
                rows = None if rows is None else rows.to(self.B[key].device)
                handles.append(lin.register_forward_hook(self._sliced_hook(key, a, rows)))
            yield
        finally:
            for h in handles:
                h.remove()

    def _sliced_hook(self, key, a: torch.Tensor, rows: torch.Tensor | None):
        b_full = self.B[key]

        def hook(_mod, args, output):
            b = b_full if rows is None else b_full.index_select(0, rows)
            return output + (args[0] @ a.T) @ b.T
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
    """Mean next-token cross-entropy of `ids` without materializing the full `[B, L, V]` logits
    (`losses.next_token_loss`: chunks of positions, checkpointed when a gradient flows)."""
    hidden = adapter.final_hidden(ids)[:, :-1]
    return next_token_loss(hidden, ids[:, 1:], adapter.lm_head(), chunk)


def _flat(traces: Traces, layer: int, names: tuple[str, ...]) -> torch.Tensor:
    return torch.cat([traces[(layer, n)].flatten() for n in names]).double()


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a - a.mean(), b - b.mean()
    denom = a.norm() * b.norm()
    return float((a @ b) / denom) if denom > 0 else 0.0


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    denom = a.norm() * b.norm()
    return float((a @ b) / denom) if denom > 0 else 0.0


def dot(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b)


@dataclass
class TraceScore:
    score: float
    rho_attn: list[float | None] = field(default_factory=list)
    rho_mlp: list[float | None] = field(default_factory=list)


@dataclass
class TracePass:
    """One gradient-trace pass of a candidate: what every proxy with `needs="traces"` is computed from."""

    traces: Traces  # the candidate's trace, averaged over the calibration batches
    base: Traces | None  # the unpruned model's, on the same batches and probes
    samples: Any = None  # per-sequence statistics (tracenas.proxies.zero_cost.ZicoAccumulator) when the pass kept them


class NonFiniteTraces(Exception):
    """The candidate's loss or traces are not finite (the Scorer scores it -inf)."""

    def __init__(self, loss: float) -> None:
        super().__init__(loss)
        self.loss = loss


# --------------------------------------------------------------------------- proxy methods


class ProxyMethod:
    """How one registered proxy scores a candidate (the object behind a `tracenas.proxies.registry.Proxy`).

    `measure` scores one candidate alone, for `Scorer`. The validator instead runs each pass once per
    candidate and calls the hook named by the entry's `needs`: `from_traces(TracePass, genome)`,
    `from_stats(stats)` (with `stat`, the forward statistic it reads), `evaluate(model, adapter, batches,
    genome, scorer)` under the masks, or `from_genome(space, genome)`.
    """

    needs_probes = False  # Scorer must be given TraceProbes (the search builds them for these)
    needs_base = False  # ... and the base model's traces
    # its pass is the same on the physically sliced candidate (tracenas.prune.sliced) as under masks; methods that
    # read the dense shapes or the zeroed weights themselves (a user's fn, SynFlow, ZiCo's own probes) keep masks
    supports_sliced = False

    def prepare(self, scorer: Scorer) -> None:
        """Run once on the unmasked model when a Scorer is built (e.g. `kl` caches the base outputs)."""

    def measure(self, scorer: Scorer, genome: Genome) -> tuple[float, dict]:
        """(score, info) of `genome` alone: on its sliced blocks when the method and `scorer.score_on` allow,
        else under the candidate's masks; the model is restored afterwards either way."""
        selection = select(scorer.space, genome, scorer.importance)
        if scorer.score_on == "sliced" and self.supports_sliced and can_slice(scorer.space.shape, selection):
            with sliced(scorer.model, scorer.adapter, selection, scorer.space.shape) as view:
                return self.measure_sliced(scorer, genome, selection, view)
        with masked(scorer.model, scorer.adapter, selection):
            return self.measure_masked(scorer, genome, selection)

    def measure_masked(self, scorer: Scorer, genome: Genome, selection: list[LayerSelection]) -> tuple[float, dict]:
        raise NotImplementedError

    def measure_sliced(self, scorer: Scorer, genome: Genome, selection: list[LayerSelection],
                       view: SlicedView) -> tuple[float, dict]:
        """The pass on the sliced model; by default the masked one (a pass that reads only the model's outputs)."""
        return self.measure_masked(scorer, genome, selection)


class TraceMethod(ProxyMethod):
    """A score of the candidate's LoRA-B traces (`from_traces`), measured alone with the Scorer's probes."""

    needs_probes = True
    supports_sliced = True

    def from_traces(self, trace_pass: TracePass, genome: Genome) -> TraceScore:
        raise NotImplementedError

    def measure_masked(self, scorer: Scorer, genome: Genome, selection: list[LayerSelection]) -> tuple[float, dict]:
        shape = scorer.space.shape
        scorer.probes.set_selection(selection, shape.head_dim, shape.num_heads)
        try:
            return self._score(scorer, genome)
        finally:
            scorer.probes.set_selection(None, shape.head_dim, shape.num_heads)

    def measure_sliced(self, scorer: Scorer, genome: Genome, selection: list[LayerSelection],
                       view: SlicedView) -> tuple[float, dict]:
        with scorer.probes.attached(view):
            return self._score(scorer, genome)

    def _score(self, scorer: Scorer, genome: Genome) -> tuple[float, dict]:
        active = {i for i, k in enumerate(genome.keep) if k}
        traces, loss = scorer.probes.trace(scorer.batches, scorer.micro_batch, scorer.loss_chunk, active)
        if not (math.isfinite(loss) and all(torch.isfinite(t).all() for t in traces.values())):
            raise NonFiniteTraces(loss)
        ts = self.from_traces(TracePass(traces, scorer.base_traces), genome)
        return ts.score, {"rho_attn": ts.rho_attn, "rho_mlp": ts.rho_mlp, "loss": loss}


class Similarity(TraceMethod):
    """Σ over kept blocks of w_attn·sim(attn traces) + w_mlp·sim(mlp traces), candidate vs base.

    The weights are the kept ratios r_attn, r_mlp (`weighted`, Φ) or 1 (the unweighted ablation).
    """

    needs_base = True

    def __init__(self, sim: Callable[[torch.Tensor, torch.Tensor], float], weighted: bool = True) -> None:
        self.sim, self.weighted = sim, weighted

    def from_traces(self, trace_pass: TracePass, genome: Genome) -> TraceScore:
        cand, base = trace_pass.traces, trace_pass.base
        total, ra, rm = 0.0, [], []
        for i, keep in enumerate(genome.keep):
            if not keep:
                ra.append(None)
                rm.append(None)
                continue
            rho_a = self.sim(_flat(cand, i, ATTN_PROJ), _flat(base, i, ATTN_PROJ))
            rho_m = self.sim(_flat(cand, i, MLP_PROJ), _flat(base, i, MLP_PROJ))
            ra.append(rho_a)
            rm.append(rho_m)
            wa, wm = (genome.attn[i], genome.mlp[i]) if self.weighted else (1.0, 1.0)
            total += wa * rho_a + wm * rho_m
        return TraceScore(total, ra, rm)


class GradNorm(TraceMethod):
    """L2 norm of the candidate's traces over its kept blocks."""

    def from_traces(self, trace_pass: TracePass, genome: Genome) -> TraceScore:
        sq = sum(float(t.double().pow(2).sum()) for (i, _), t in trace_pass.traces.items() if genome.keep[i])
        return TraceScore(math.sqrt(sq))


class FunctionProxy(ProxyMethod):
    """`fn(model, adapter, batches, genome, scorer) -> float`, evaluated under the candidate's masks."""

    def __init__(self, fn: Callable[..., float], prepare: Callable[[Scorer], None] | None = None) -> None:
        self.fn, self._prepare = fn, prepare

    def prepare(self, scorer: Scorer) -> None:
        if self._prepare is not None:
            self._prepare(scorer)

    def evaluate(self, model: nn.Module, adapter: ModelAdapter, batches: torch.Tensor, genome: Genome,
                 scorer: Scorer | None) -> float:
        return float(self.fn(model, adapter, batches, genome, scorer))

    def measure_masked(self, scorer: Scorer, genome: Genome, selection: list[LayerSelection]) -> tuple[float, dict]:
        return self.evaluate(scorer.model, scorer.adapter, scorer.batches, genome, scorer), {"loss": None}


class SynFlow(ProxyMethod):
    """`synflow` on the first calibration sequence, under the candidate's masks."""

    def evaluate(self, model: nn.Module, adapter: ModelAdapter, batches: torch.Tensor, genome: Genome,
                 scorer: Scorer | None = None) -> float:
        return synflow(model, adapter, batches[:1], genome)

    def measure_masked(self, scorer: Scorer, genome: Genome, selection: list[LayerSelection]) -> tuple[float, dict]:
        return self.evaluate(scorer.model, scorer.adapter, scorer.batches, genome), {"loss": float("nan")}


class ParamCount(ProxyMethod):
    """The candidate's parameter count: no pass, no masks."""

    def from_genome(self, space: SearchSpace, genome: Genome) -> float:
        return float(space.params(genome))

    def measure(self, scorer: Scorer, genome: Genome) -> tuple[float, dict]:
        return self.from_genome(scorer.space, genome), {}


# The built-in entries of tracenas.proxies.registry point here ("tracenas.proxies.traces:PHI", ...).
PHI = Similarity(pearson)
PEARSON = Similarity(pearson, weighted=False)
COSINE = Similarity(cosine)
DOT = Similarity(dot)
GRADNORM = GradNorm()
SYNFLOW = SynFlow()
PARAMS = ParamCount()


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
    score_on: str = "sliced"  # "sliced": on the candidate's kept weights where the method allows; "masked": masks

    def __post_init__(self) -> None:
        if self.score_on not in ("sliced", "masked"):
            raise ValueError(f"score_on must be 'sliced' or 'masked', not {self.score_on!r}")
        self.method: ProxyMethod = get_proxy(self.proxy).method  # read now: late registrations count
        if self.method.needs_probes and self.probes is None:
            raise ValueError(f"proxy {self.proxy!r} needs TraceProbes")
        if self.method.needs_base and self.base_traces is None:
            raise ValueError(f"proxy {self.proxy!r} needs base traces")
        self.method.prepare(self)

    def score(self, genome: Genome) -> tuple[float, dict]:
        """Return (score, info). A non-finite loss or trace gives -inf with a warning."""
        t0 = time.perf_counter()
        try:
            value, info = self._measure_fitting(genome)
        except NonFiniteTraces as err:
            log.warning("non-finite loss or gradient for candidate %s: scored -inf", genome.key()[:40])
            return float("-inf"), {"loss": err.loss, "seconds": time.perf_counter() - t0}
        info["seconds"] = time.perf_counter() - t0
        if not math.isfinite(value):
            log.warning("non-finite score for candidate %s: scored -inf", genome.key()[:40])
            value = float("-inf")
        return value, info


    def _measure_fitting(self, genome: Genome) -> tuple[float, dict]:
        """`method.measure`, halving `micro_batch` after an out-of-memory error until it fits (then keeping it)."""
        while True:
            try:
                return self.method.measure(self, genome)
            except torch.cuda.OutOfMemoryError:  # torch.OutOfMemoryError, also on builds without CUDA
                if self.micro_batch <= 1:
                    raise
                self.micro_batch = max(1, self.micro_batch // 2)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                log.warning("out of memory: micro-batch lowered to %d", self.micro_batch)


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

