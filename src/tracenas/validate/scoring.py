"""Proxy scores of a candidate per seed from shared passes: `Validator`, `SeedContext`, the Φ variants."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from tracenas.proxies import traces as proxy_mod
from tracenas.proxies import zero_cost
from tracenas.arch import Genome, SearchSpace
from tracenas.runtime.errors import TracenasError
from tracenas.prune.masking import Importance, LayerSelection, compute_importance, head_rows, masked, select
from tracenas.models.adapter import ATTN_PROJ, MLP_PROJ, ModelAdapter
from tracenas.proxies.traces import PHI, TracePass, TraceProbes, Traces, cosine, pearson
from tracenas.proxies.registry import NEEDS, get_proxy
from tracenas.validate.config import VARIANTS, ValidateConfig, _ints

log = logging.getLogger("tracenas.validate")  # one logger for the package: log lines name it as before the split


def _block(traces: Traces, lo: int, hi: int) -> Traces:
    return {k: v[:, lo:hi] for k, v in traces.items()}


def _kept_rows(sel: LayerSelection, name: str, out_features: int, shape) -> torch.Tensor | None:
    """Rows of a projection's B trace that exist in the sliced model (None = all of them)."""
    if name == "q_proj" or (name in ("k_proj", "v_proj") and not shape.is_gqa):
        heads = sel.heads if name == "q_proj" else sel.kv_heads
        if len(heads) * shape.head_dim < out_features:
            return head_rows(heads, shape.head_dim)
    if name in ("gate_proj", "up_proj") and len(sel.channels) < out_features:
        return torch.tensor(sel.channels, dtype=torch.long)
    return None


def _flat_all(traces: Traces, base: Traces, layers: range, names: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    c = torch.cat([(traces[(i, n)] if (i, n) in traces else torch.zeros_like(base[(i, n)])).flatten()
                   for i in layers for n in names]).double()
    b = torch.cat([base[(i, n)].flatten() for i in layers for n in names]).double()
    return c, b


def variant_scores(cand: Traces, base: Traces, genome: Genome, selection: list[LayerSelection], shape) -> dict:
    """Φ variants from the same traces (docs/proxy-validation.md explains each)."""
    out = {}
    total = 0.0
    for i, keep in enumerate(genome.keep):
        if not keep:
            continue
        for names, w in ((ATTN_PROJ, genome.attn[i]), (MLP_PROJ, genome.mlp[i])):
            cs, bs = [], []
            for n in names:
                rows = _kept_rows(selection[i], n, base[(i, n)].shape[0], shape)
                c, b = cand[(i, n)], base[(i, n)]
                if rows is not None:
                    c, b = c.index_select(0, rows.to(c.device)), b.index_select(0, rows.to(b.device))
                cs.append(c.flatten())
                bs.append(b.flatten())
            total += w * pearson(torch.cat(cs).double(), torch.cat(bs).double())
    out["phi_active"] = total
    kept = [i for i, k in enumerate(genome.keep) if k]
    c, b = _flat_all(cand, base, kept, ATTN_PROJ + MLP_PROJ)
    out["phi_global"] = pearson(c, b)
    c, b = _flat_all(cand, base, range(len(genome.keep)), ATTN_PROJ + MLP_PROJ)
    out["phi_all"] = pearson(c, b)
    out["cosine_all"] = cosine(c, b)
    return out


@dataclass
class SeedContext:
    """Everything a proxy seed fixes: calibration windows, probe subspaces, base traces, base outputs."""

    seed: int
    batches: torch.Tensor  # [N_pass, L]
    A: dict  # (layer, proj) -> [R_total, in] (block "main" first, then one block per other sweep rank)
    blocks: dict[int, tuple[int, int]]  # rank -> column range of the traces
    base_snaps: dict[int, Traces]  # N -> mean base trace of the first N sequences (full R at N_main, main block else)
    base_cl: dict[int, Traces]  # context length -> base trace (main block)
    reference: zero_cost.ForwardReference | None
    setup_seconds: float = 0.0


class Validator:
    """Holds the model and the fixed pieces; scores candidates per seed and computes their ground truth."""

    def __init__(self, cfg: ValidateConfig, model: nn.Module, adapter: ModelAdapter, space: SearchSpace,
                 tokenizer, importance: Importance | None = None):
        self.cfg, self.model, self.adapter, self.space, self.tokenizer = cfg, model, adapter, space, tokenizer
        self.shape = space.shape
        self.n_main = cfg.num_sequences
        self.n_pass = max([self.n_main] + (_ints(cfg.sweep_n) if cfg.sweep else []))
        self.ranks = [cfg.rank] + ([r for r in _ints(cfg.sweep_rank) if r != cfg.rank] if cfg.sweep else [])
        self.snap_n = sorted({self.n_main} | (set(_ints(cfg.sweep_n)) if cfg.sweep else set()))
        self.cls = [c for c in _ints(cfg.sweep_cl) if c != cfg.seq_len] if cfg.sweep else []
        self._windows: torch.Tensor | None = None
        self.importance = importance or compute_importance(model, adapter, self.calibration(0)[:self.n_main],
                                                           micro_batch=cfg.micro_batch)
        self.contexts: dict[int, SeedContext] = {}
        self._scorers: dict[tuple[int, str], proxy_mod.Scorer] = {}
        self.last_rho: dict | None = None  # per-block ρ of Φ from the latest `score`

    # -- data ------------------------------------------------------------------------------
    def calibration(self, seed: int) -> torch.Tensor:
        """Seed 0: the first windows of the calibration split (what the search uses); else a seeded choice."""
        from tracenas import data

        cfg = self.cfg
        if self._windows is None:
            total = data.count_tokens(self.tokenizer, cfg.data, split="calibration") // cfg.seq_len
            if total < self.n_pass:
                raise TracenasError(f"the calibration split holds {total} windows of {cfg.seq_len} tokens; "
                                    f"{self.n_pass} are needed")
            self._windows = data.token_batches(self.tokenizer, cfg.data, split="calibration", num_sequences=total,
                                               seq_len=cfg.seq_len)
        if seed == 0:
            return self._windows[:self.n_pass]
        g = torch.Generator().manual_seed(1_000_003 * seed + 17)
        return self._windows[torch.randperm(self._windows.shape[0], generator=g)[:self.n_pass]]

    # -- probes ----------------------------------------------------------------------------
    def _draw_A(self, seed: int) -> tuple[dict, dict[int, tuple[int, int]]]:
        main = TraceProbes(self.model, self.adapter, rank=self.cfg.rank, seed=seed)
        main.remove()
        A = dict(main.A)
        blocks = {self.cfg.rank: (0, self.cfg.rank)}
        off = self.cfg.rank
        for k, r in enumerate(self.ranks[1:], start=1):
            g = torch.Generator().manual_seed(seed * 7919 + 104729 * k)
            for key, a in list(A.items()):  # same scaling as TraceProbes: N(0, 1/in)
                extra = torch.randn(r, a.shape[1], generator=g) / math.sqrt(a.shape[1])
                A[key] = torch.cat([a, extra.to(a.device, a.dtype)])
            blocks[r] = (off, off + r)
            off += r
        return A, blocks

    @contextmanager
    def probes(self, ctx: SeedContext) -> Iterator[TraceProbes]:
        total = sum(hi - lo for lo, hi in ctx.blocks.values())
        p = TraceProbes(self.model, self.adapter, rank=total, seed=ctx.seed)
        p.A = ctx.A
        try:
            yield p
        finally:
            p.remove()

    def _trace_pass(self, probes: TraceProbes, batches: torch.Tensor, genome: Genome, with_sweep: bool
                    ) -> tuple[dict[int, Traces], zero_cost.ZicoAccumulator, dict, list[float]]:
        """Traces averaged over the first N sequences for every N in the snapshot set, in one pass.

        The first `num_sequences` sequences are traced one at a time (they are ZiCo's samples, and their
        mean is what `TraceProbes.trace` gives on them); sweep sequences beyond go by micro-batches,
        with a boundary at every snapshot N. Returns (snapshots, zico, seconds, losses).
        """
        cfg = self.cfg
        active = {i for i, k in enumerate(genome.keep) if k}
        snaps = self.snap_n if with_sweep else [self.n_main]
        n_end = max(snaps)
        bounds = sorted(set(snaps) | set(range(1, self.n_main + 1))
                        | set(range(self.n_main + cfg.micro_batch, n_end + 1, cfg.micro_batch)) | {n_end})
        main_lo, main_hi = self.ctx_main_block
        running: Traces = {}
        out: dict[int, Traces] = {}
        zico = zero_cost.ZicoAccumulator()
        seconds = {"main": 0.0, "sweep": 0.0}
        losses = []
        prev = 0
        for b in bounds:
            if b > n_end:
                break
            t0 = time.perf_counter()
            ids = batches[prev:b]
            tr, loss = probes.trace(ids, cfg.micro_batch, cfg.loss_chunk, active)
            losses.append(loss)
            if b <= self.n_main:
                zico.add(_block(tr, main_lo, main_hi))
            for k, t in tr.items():
                w = t * ids.shape[0]
                running[k] = running[k] + w if k in running else w
            if b in snaps:
                mean = {k: v / b for k, v in running.items()}
                out[b] = mean if b == self.n_main else _block(mean, main_lo, main_hi)
            seconds["main" if b <= self.n_main else "sweep"] += time.perf_counter() - t0
            prev = b
        return out, zico, seconds, losses

    @property
    def ctx_main_block(self) -> tuple[int, int]:
        return 0, self.cfg.rank

    def _cl_traces(self, probes: TraceProbes, batches: torch.Tensor, genome: Genome) -> dict[int, Traces]:
        active = {i for i, k in enumerate(genome.keep) if k}
        out = {}
        for c in self.cls:
            tr, _ = probes.trace(batches[:self.n_main, :c], self.cfg.micro_batch, self.cfg.loss_chunk, active)
            out[c] = _block(tr, *self.ctx_main_block)
        return out

    def context(self, seed: int) -> SeedContext:
        """Set up (once) a proxy seed: base traces of every needed setting and the base forward outputs."""
        if seed in self.contexts:
            return self.contexts[seed]
        t0 = time.perf_counter()
        batches = self.calibration(seed)
        A, blocks = self._draw_A(seed)
        ctx = SeedContext(seed, batches, A, blocks, {}, {}, None)
        full = Genome.full(self.shape.num_layers)
        with self.probes(ctx) as p:
            ctx.base_snaps, _, _, _ = self._trace_pass(p, batches, full, self.cfg.sweep)
            ctx.base_cl = self._cl_traces(p, batches, full)
        ctx.reference = zero_cost.prepare_reference(self.model, self.adapter, batches[:self.n_main],
                                                    self.cfg.micro_batch)
        ctx.setup_seconds = time.perf_counter() - t0
        log.info("proxy seed %d ready in %.1f s (base traces over %d x %d tokens, ranks %s)", seed,
                 ctx.setup_seconds, batches.shape[0], batches.shape[1], ",".join(map(str, blocks)))
        self.contexts[seed] = ctx
        return ctx

    # -- scoring ---------------------------------------------------------------------------
    def score(self, ctx: SeedContext, genome: Genome, names: list[str], with_sweep: bool = False
              ) -> tuple[dict, dict, dict | None]:
        """Scores of `names` (and the sweep) for one candidate and seed: (scores, seconds, sweep scores).

        Proxies are grouped by the pass they need (their registry entry's `needs`); each pass runs once.
        """
        cfg = self.cfg
        selection = select(self.space, genome, self.importance)
        self.last_rho = None
        scores: dict[str, float] = {}
        cost: dict[str, float] = {}
        sweep = None
        batches = ctx.batches[:self.n_main]
        methods = {n: get_proxy(n).method for n in names if n not in VARIANTS}
        needs = {n: "traces" if n in VARIANTS else get_proxy(n).needs for n in names}
        group = {k: [n for n in names if needs[n] == k] for k in NEEDS}
        need_trace = with_sweep or bool(group["traces"])
        # proxies with their own pass: Scorers built unmasked (their `prepare` hooks must see the base model)
        own = {n: self._scorer(ctx, n) for n in group["model"]}
        # probes hook every block, so they are attached before masking swaps dropped blocks out
        with (self.probes(ctx) if need_trace else nullcontext()) as p, masked(self.model, self.adapter, selection):
            if need_trace:
                p.set_selection(selection, self.shape.head_dim, self.shape.num_heads)
                try:
                    snaps, zico, sec, losses = self._trace_pass(p, ctx.batches, genome, with_sweep)
                    t0 = time.perf_counter()
                    cl = self._cl_traces(p, ctx.batches, genome) if with_sweep else {}
                    sec["sweep"] += time.perf_counter() - t0
                finally:
                    p.set_selection(None, self.shape.head_dim, self.shape.num_heads)
                main = snaps[self.n_main]
                finite = all(math.isfinite(x) for x in losses) and all(bool(torch.isfinite(t).all())
                                                                       for t in main.values())
                cand = _block(main, *self.ctx_main_block)
                base = _block(ctx.base_snaps[self.n_main], *self.ctx_main_block)
                shared = TracePass(cand, base, zico)
                variants: dict | None = None
                for n in group["traces"]:
                    t0 = time.perf_counter()
                    if not finite:
                        scores[n] = float("-inf")
                    elif n in VARIANTS:
                        if variants is None:
                            variants = variant_scores(cand, base, genome, selection, self.shape)
                        scores[n] = variants[n]
                    else:
                        ts = methods[n].from_traces(shared, genome)
                        scores[n] = ts.score
                        if n == "phi":  # per-block ρ: other weightings can be studied offline
                            self.last_rho = {"attn": ts.rho_attn, "mlp": ts.rho_mlp}
                    cost[n] = sec["main"] + time.perf_counter() - t0
                if with_sweep:
                    sweep = self._sweep_scores(ctx, genome, snaps, cl) if finite else None
                    sweep = sweep or {}
                    sweep["_seconds"] = sec["sweep"]
            if group["forward"]:
                t0 = time.perf_counter()
                stats = zero_cost.forward_stats(self.model, self.adapter, batches, genome, selection,
                                                reference=ctx.reference, naswot_tokens=cfg.naswot_tokens,
                                                naswot_seed=ctx.seed, micro_batch=cfg.micro_batch,
                                                want=tuple(methods[n].stat for n in group["forward"]))
                dt = time.perf_counter() - t0
                for n in group["forward"]:
                    scores[n], cost[n] = methods[n].from_stats(stats), dt
            for n in group["model"]:
                t0 = time.perf_counter()  # its own pass, with the candidate's masks already applied
                scores[n] = methods[n].evaluate(self.model, self.adapter, batches, genome, own[n])
                cost[n] = time.perf_counter() - t0
            for n in group["genome"]:
                scores[n], cost[n] = methods[n].from_genome(self.space, genome), 0.0
        return scores, cost, sweep

    def _scorer(self, ctx: SeedContext, name: str) -> proxy_mod.Scorer:
        key = (ctx.seed, name)
        if key not in self._scorers:
            self._scorers[key] = proxy_mod.Scorer(self.model, self.adapter, self.space, self.importance,
                                                  ctx.batches[:self.n_main], name, micro_batch=self.cfg.micro_batch,
                                                  loss_chunk=self.cfg.loss_chunk)
        return self._scorers[key]

    def _sweep_scores(self, ctx: SeedContext, genome: Genome, snaps: dict[int, Traces], cl: dict[int, Traces]) -> dict:
        cfg = self.cfg
        out = {}
        main_lo, main_hi = self.ctx_main_block
        for n in _ints(cfg.sweep_n):
            c, b = snaps[n], ctx.base_snaps[n]
            if n == self.n_main:
                c, b = _block(c, main_lo, main_hi), _block(b, main_lo, main_hi)
            out[f"N={n}"] = PHI.from_traces(TracePass(c, b), genome).score
        for length in _ints(cfg.sweep_cl):
            out[f"CL={length}"] = out[f"N={self.n_main}"] if length == cfg.seq_len else \
                PHI.from_traces(TracePass(cl[length], ctx.base_cl[length]), genome).score
        for r in _ints(cfg.sweep_rank):
            lo, hi = ctx.blocks[r]
            out[f"r={r}"] = PHI.from_traces(TracePass(_block(snaps[self.n_main], lo, hi),
                                                      _block(ctx.base_snaps[self.n_main], lo, hi)), genome).score
        return out
