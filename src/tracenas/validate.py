"""Proxy validation (paper Sec. 4.2, Table 1, Fig. 3): do proxy scores rank pruned candidates like
their held-out perplexity after an equal short recovery?

    tracenas validate-proxy --out runs/validate --num-candidates 30 --budget 0.6 --preset quick --seeds 3
    tracenas validate-proxy --out runs/validate --sweep                 # + stability in N, context, rank
    torchrun --nproc-per-node 2 -m tracenas validate-proxy --out ...    # candidates split over ranks (gloo)

Candidates are sampled once (deterministic by `--seed`; a third width-only, a third depth-heavy, a
third mixed, repaired into the budget window like the search). Ground truth is computed once per
candidate on the physically sliced model: eval-split perplexity zero-shot and after each step of
`--recover-steps` within ONE short recovery run (fixed tokens, LR, seed). Proxies are computed per
`--seeds` (each seed = other calibration windows and LoRA probes; the head/channel importance, and so
the candidates themselves, stay fixed). Every proxy derives from at most three passes per candidate
and seed: one gradient-trace pass (phi, pearson, cosine, dot, gradnorm, zico, variants, sweep), one
forward pass (ppl, kl, naswot) and one SynFlow pass.

Run directory (`--out`):
    validate.yaml       resolved config              candidates.json   the sampled genomes
    candidates.jsonl    append-only records: ground truth, proxy scores per seed, sweep (resume = skip them)
    results.json        correlations (mean/std over seeds), costs   table.md   Table-1-like markdown
    scatter.png         proxy vs recovered perplexity, one panel per proxy
    sweep.json, sweep.md, sweep.png   with --sweep           validate.log   log of the run
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from tracenas import proxy as proxy_mod
from tracenas import zero_cost
from tracenas.arch import Genome, SearchSpace, format_count
from tracenas.config import atomic_write_json, atomic_write_text, opt, save_config
from tracenas.errors import RunDirError, TracenasError
from tracenas.masking import (
    Importance,
    LayerSelection,
    compute_importance,
    head_rows,
    masked,
    select,
    slice_model,
)
from tracenas.models.adapter import ATTN_PROJ, MLP_PROJ, ModelAdapter
from tracenas.proxy import TraceProbes, Traces, causal_lm_loss, cosine, pearson, synflow, trace_score

log = logging.getLogger(__name__)

TRACE_PROXIES = ("phi", "pearson", "cosine", "dot", "gradnorm", "zico")
FORWARD_PROXIES = ("ppl", "kl", "naswot")
BUILTIN = ("phi", "pearson", "cosine", "dot", "params", "gradnorm", "synflow", "naswot", "zico", "ppl", "kl")
LABELS = {"phi": "TraceNAS (Φ)", "pearson": "TraceNAS – Unweighted", "cosine": "TraceNAS – Cosine",
          "dot": "TraceNAS – Dot", "params": "#Params", "gradnorm": "GradNorm", "synflow": "Synaptic Saliency",
          "naswot": "NASWOT", "zico": "ZiCo", "ppl": "Calib. PPL (fwd)", "kl": "KL to base (fwd)"}
FAMILIES = ("width", "depth", "mixed")

PRESETS: dict[str, dict[str, Any]] = {
    # CPU: SmolLM2-135M, ~1-2 min per candidate on 2 cores.
    "quick": {"num_sequences": 4, "seq_len": 256, "rank": 64, "micro_batch": 1, "eval_sequences": 16,
              "eval_seq_len": 256, "recover_batch": 2, "recover_seq_len": 256, "recover_steps": "0,10,30",
              "recover_lr": 2e-4, "sweep_n": "1,2,4,8", "sweep_cl": "64,128,256", "sweep_rank": "8,16,32,64"},
    # GPU, paper-like: 16 x 4096 calibration tokens, r = 64; sweep grids of Fig. 3 / Tables 6-7.
    "paper": {"num_sequences": 16, "seq_len": 4096, "rank": 64, "micro_batch": 4, "eval_sequences": 64,
              "eval_seq_len": 4096, "recover_batch": 32, "recover_seq_len": 4096, "recover_steps": "0,100,500",
              "recover_lr": 1e-4, "sweep_n": "4,8,16,64,128,256", "sweep_cl": "128,256,512,1024,2048,4096",
              "sweep_rank": "2,8,64,256,1024"},
}
# May change between invocations on the same --out; everything else must match the saved validate.yaml.
_RESUMABLE = ("num_candidates", "seeds", "proxies", "variants", "sweep", "device", "report_only")


def _ints(text: str | list | None) -> list[int]:
    if text is None:
        return []
    items = text if isinstance(text, (list, tuple)) else str(text).replace(" ", "").split(",")
    try:
        return sorted({int(x) for x in items if str(x) != ""})
    except ValueError as err:
        raise TracenasError(f"expected a comma-separated list of integers, got {text!r}") from err


@dataclass
class ValidateConfig:
    """Rank correlation of proxies with perplexity after recovery, over sampled candidates."""

    model: str | None = opt(None, "HF model id, local directory or .gguf; empty = embedded SmolLM2-135M")
    data: str | None = opt(None, "text: empty = embedded Wikipedia (calibration/train/eval splits never overlap)")
    out: str = opt("runs/validate", "run directory; rerunning on it resumes (finished records are skipped)")
    preset: str = opt("quick", "quick (CPU) or paper (GPU); explicit flags override it", choices=tuple(PRESETS))
    budget: str = opt("0.6", "parameter budget of every candidate: a count (81M) or a fraction (0.6)")
    budget_tolerance: float = opt(0.02, "candidates lie in [C*(1-tol), C] parameters, as in the search")
    min_layers: int | None = opt(None, "minimum kept blocks (default: half of the base model's blocks)")
    include_embeddings: bool = opt(True, "count embeddings/lm_head in the budget (the paper does)")
    num_candidates: int = opt(50, "candidates sampled (1/3 width-only, 1/3 depth-heavy, 1/3 mixed)")
    seed: int = opt(0, "seed of the candidate sample and of the recovery")
    seeds: int = opt(3, "proxy seeds (calibration windows + LoRA probes); correlations are averaged over them")
    proxies: str = opt("all", "comma-separated proxies to score, or 'all' (every registered proxy)")
    variants: bool = opt(False, "also score Φ variants (phi_active, phi_global, phi_all, cosine_all) from the same traces")
    num_sequences: int | None = opt(None, "calibration sequences N for the proxies")
    seq_len: int | None = opt(None, "calibration context length")
    rank: int | None = opt(None, "LoRA probe rank r of the gradient traces")
    micro_batch: int | None = opt(None, "calibration sequences per pass (ZiCo's samples are these micro-batches)")
    naswot_tokens: int = opt(256, "calibration tokens in NASWOT's kernel (a fixed seeded subsample)")
    eval_sequences: int | None = opt(None, "held-out (eval split) sequences for the ground-truth perplexity")
    eval_seq_len: int | None = opt(None, "tokens per eval sequence")
    recover_steps: str | None = opt(None, "recovery checkpoints, e.g. 0,10,30: perplexity after each, one run")
    recover_batch: int | None = opt(None, "training sequences per recovery step")
    recover_seq_len: int | None = opt(None, "tokens per training sequence")
    recover_lr: float | None = opt(None, "peak AdamW learning rate of the recovery (linear warmup over a tenth of the steps, then linear decay)")
    recover_dtype: str = opt("float32", "compute of the recovery and of the ground-truth eval: float32, or bfloat16 "
                                        "autocast (fp32 master weights; ~2x faster on CPUs with AVX512-BF16)",
                             choices=("float32", "bfloat16"))
    sweep: bool = opt(False, "stability study: Φ at other calibration sizes, context lengths and ranks")
    sweep_n: str | None = opt(None, "calibration sizes N of the sweep (reference: the largest)")
    sweep_cl: str | None = opt(None, "context lengths of the sweep (reference: the largest)")
    sweep_rank: str | None = opt(None, "LoRA ranks of the sweep (reference: the largest)")
    loss_chunk: int = opt(1024, "positions per lm_head chunk (the full logits are never materialized)")
    device: str = opt("auto", "auto, cpu, cuda, ... (under torchrun: cuda:LOCAL_RANK)")
    dtype: str = opt("auto", "dtype of the model copy the proxies run on: auto (bf16 on GPU, fp32 on CPU); the "
                             "ground truth always slices the fp32 weights", choices=("auto", "float32", "bfloat16", "float16"))
    report_only: bool = opt(False, "only rewrite the reports from the records in --out")

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise TracenasError(f"unknown preset {self.preset!r}; choose from {', '.join(PRESETS)}")
        for name in ("recover_steps", "sweep_n", "sweep_cl", "sweep_rank"):
            value = getattr(self, name)
            if isinstance(value, (list, tuple)):
                setattr(self, name, ",".join(str(v) for v in value))
            _ints(getattr(self, name))
        for name in ("num_candidates", "seeds", "num_sequences", "seq_len", "rank", "micro_batch", "eval_sequences",
                     "eval_seq_len", "recover_batch", "recover_seq_len", "loss_chunk", "naswot_tokens"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise TracenasError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
        if any(x < 0 for x in _ints(self.recover_steps)):
            raise TracenasError("--recover-steps must be non-negative")
        if self.recover_lr is not None and not self.recover_lr > 0:
            raise TracenasError("--recover-lr must be > 0")
        if not 0 < self.budget_tolerance < 1:
            raise TracenasError("--budget-tolerance must be in (0, 1)")

    def resolved(self) -> ValidateConfig:
        values = {k: v for k, v in PRESETS[self.preset].items() if getattr(self, k) is None}
        cfg = dataclasses.replace(self, **values)
        if not _ints(cfg.recover_steps):
            raise TracenasError("--recover-steps needs at least one step (0 = zero-shot only)")
        if cfg.sweep:
            if max(_ints(cfg.sweep_cl)) > cfg.seq_len:
                raise TracenasError("--sweep-cl values cannot exceed --seq-len (shorter contexts are prefixes)")
            if cfg.seq_len not in _ints(cfg.sweep_cl) or cfg.rank not in _ints(cfg.sweep_rank) \
                    or cfg.num_sequences not in _ints(cfg.sweep_n):
                raise TracenasError("the sweep lists must contain the main setting (--num-sequences, --seq-len, --rank)")
        return cfg

    @property
    def steps(self) -> list[int]:
        return _ints(self.recover_steps)


@dataclass
class ValidationResult:
    out: Path
    summary: dict
    candidates: int
    seconds: float


# --------------------------------------------------------------------------- candidates


def sample_candidates(space: SearchSpace, budget: int, n: int, seed: int = 0, tolerance: float = 0.02,
                      max_tries: int = 500) -> list[tuple[Genome, str]]:
    """`n` distinct genomes in the budget window `[C*(1-tol), C]`, cycling width / depth / mixed.

    Candidate i depends only on (seed, i) and the candidates before it, so a larger `n` extends a
    smaller sample. Widths are random then rescaled into the window by the search's repair.
    """
    from tracenas.search.evolution import Evolution, EvolutionConfig

    evo = Evolution(EvolutionConfig(budget_tolerance=tolerance, seed=seed), space, budget, lambda g: (0.0, {}))
    layers, lmin = space.shape.num_layers, space.min_layers
    out: list[tuple[Genome, str]] = []
    seen: set[str] = set()
    for i in range(n):
        family = FAMILIES[i % 3]
        rng = np.random.default_rng([seed, i])
        for _ in range(max_tries):
            if family == "width":
                keep_n, lo = layers, 0.2
            elif family == "depth":
                keep_n, lo = int(rng.integers(lmin, lmin + max(1, (layers - lmin) // 2) + 1)), 0.85
            else:
                keep_n, lo = layers - int(rng.integers(1, max(1, (layers - lmin) // 2) + 1)), 0.3
            keep_n = max(lmin, min(layers, keep_n))
            kept = set(rng.choice(layers, size=keep_n, replace=False).tolist())
            keep = tuple(j in kept for j in range(layers))
            attn = tuple(float(x) for x in rng.uniform(lo, 1.0, layers))
            mlp = tuple(float(x) for x in rng.uniform(lo, 1.0, layers))
            g = evo.repair(Genome(keep, attn, mlp))
            if g is not None and g.key() not in seen:
                seen.add(g.key())
                out.append((g, family))
                break
        else:
            log.warning("could not draw a new %s candidate #%d in the budget window; stopping at %d", family, i, len(out))
            break
    return out


# --------------------------------------------------------------------------- ground truth


def short_recover(model: nn.Module, train_tokens: torch.Tensor, steps: int, lr: float, *, batch_size: int | None = None,
                  micro_batch: int = 1, seed: int = 0, warmup_frac: float = 0.1, weight_decay: float = 0.0,
                  max_grad_norm: float = 1.0, loss_chunk: int = 1024, autocast: torch.dtype | None = None,
                  callback: Callable[[int], None] | None = None) -> list[float]:
    """Deterministic in-memory recovery: AdamW, fp32, linear warmup then linear decay, fixed batches.

    Step i trains on rows `[i*B, (i+1)*B)` of `train_tokens` (B = batch_size, default N // steps), so
    every candidate sees the same tokens in the same order. `callback(step)` runs after each step.
    `autocast` (e.g. torch.bfloat16) runs the matmuls in that dtype; weights and AdamW stay fp32.
    Returns the training loss per step. The model is trained in place and left in eval mode.
    """
    from tracenas.models import get_adapter

    if steps < 1:
        return []
    bs = batch_size or train_tokens.shape[0] // steps
    if bs < 1 or bs * steps > train_tokens.shape[0]:
        raise TracenasError(f"{steps} recovery steps of {batch_size} sequences need more than {train_tokens.shape[0]}")
    torch.manual_seed(seed)
    adapter = get_adapter(model)
    device = next(model.parameters()).device
    params = [p for p in model.parameters()]
    for p in params:
        p.requires_grad_(True)
    decay = [p for p in params if p.dim() >= 2]
    rest = [p for p in params if p.dim() < 2]
    opt_ = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.95), eps=1e-8)
    warmup = max(1, round(warmup_frac * steps))
    losses = []
    model.train()
    try:
        for step in range(steps):
            scale = (step + 1) / warmup if step < warmup else (steps - step) / max(1, steps - warmup + 1)
            for group in opt_.param_groups:
                group["lr"] = lr * scale
            batch = train_tokens[step * bs:(step + 1) * bs]
            total = 0.0
            for s in range(0, bs, micro_batch):
                ids = batch[s:s + micro_batch].to(device)
                with torch.autocast(device.type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
                    loss = causal_lm_loss(adapter, ids, loss_chunk)
                (loss * ids.shape[0] / bs).backward()
                total += float(loss.detach()) * ids.shape[0] / bs
            if max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            opt_.step()
            opt_.zero_grad(set_to_none=True)
            losses.append(total)
            if callback is not None:
                callback(step + 1)
    finally:
        model.eval()
        for p in params:
            p.requires_grad_(False)
    return losses


def ground_truth(model: nn.Module, adapter: ModelAdapter, selection: list[LayerSelection], eval_tokens: torch.Tensor,
                 train_tokens: torch.Tensor, steps: list[int], *, lr: float, batch_size: int, micro_batch: int = 1,
                 seed: int = 0, loss_chunk: int = 1024, autocast: torch.dtype | None = None) -> dict:
    """Eval perplexity of the sliced candidate zero-shot and after each of `steps` of one short recovery.

    `model` should hold fp32 weights (the candidate is sliced from them and trained in fp32); `autocast`
    runs the recovery and eval matmuls in that dtype.
    """
    from tracenas.evaluate import perplexity

    t0 = time.perf_counter()
    small = slice_model(model, adapter, selection).float()
    small.requires_grad_(False)
    res: dict[str, Any] = {"ppl": {}, "nll": {}, "params": sum(p.numel() for p in small.parameters())}
    eval_seconds = 0.0

    def evaluate(step: int) -> None:
        nonlocal eval_seconds
        if step not in steps:
            return
        te = time.perf_counter()
        device = next(small.parameters()).device
        with torch.autocast(device.type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
            r = perplexity(small, eval_tokens, seq_len=eval_tokens.shape[1], micro_batch=max(1, micro_batch),
                           chunk=loss_chunk)
        eval_seconds += time.perf_counter() - te
        res["ppl"][str(step)], res["nll"][str(step)] = r["ppl"], r["nll"]

    evaluate(0)
    zero_shot_eval, tr = eval_seconds, time.perf_counter()
    res["train_loss"] = short_recover(small, train_tokens, max(steps), lr, batch_size=batch_size,
                                      micro_batch=micro_batch, seed=seed, loss_chunk=loss_chunk, autocast=autocast,
                                      callback=evaluate)
    res["seconds"] = {"total": time.perf_counter() - t0, "eval": eval_seconds,
                      "recover": time.perf_counter() - tr - (eval_seconds - zero_shot_eval)}
    return res


# --------------------------------------------------------------------------- proxies: shared passes


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


VARIANTS = ("phi_active", "phi_global", "phi_all", "cosine_all")
LABELS.update({"phi_active": "Φ, pruned coords excluded", "phi_global": "Φ, one Pearson (kept blocks)",
               "phi_all": "Φ, one Pearson (all blocks)", "cosine_all": "cosine (all blocks)"})


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
        """Scores of `names` (and the sweep) for one candidate and seed: (scores, seconds, sweep scores)."""
        cfg = self.cfg
        selection = select(self.space, genome, self.importance)
        self.last_rho = None
        scores: dict[str, float] = {}
        cost: dict[str, float] = {}
        sweep = None
        batches = ctx.batches[:self.n_main]
        need_trace = with_sweep or any(n in TRACE_PROXIES or n in VARIANTS for n in names)
        need_fwd = [n for n in names if n in FORWARD_PROXIES]
        # other registered proxies: Scorers built unmasked (their `prepare` hooks must see the base model)
        others = {n: self._scorer(ctx, n) for n in names if n not in BUILTIN and n not in VARIANTS}
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
                variants: dict | None = None
                for n in names:
                    if n not in TRACE_PROXIES and n not in VARIANTS:
                        continue
                    t0 = time.perf_counter()
                    if not finite:
                        scores[n] = float("-inf")
                    elif n == "zico":
                        scores[n] = zico.score()
                    elif n in VARIANTS:
                        if variants is None:
                            variants = variant_scores(cand, base, genome, selection, self.shape)
                        scores[n] = variants[n]
                    else:
                        ts = trace_score(n, cand, base, genome)
                        scores[n] = ts.score
                        if n == "phi":  # per-block ρ: other weightings can be studied offline
                            self.last_rho = {"attn": ts.rho_attn, "mlp": ts.rho_mlp}
                    cost[n] = sec["main"] + time.perf_counter() - t0
                if with_sweep:
                    sweep = self._sweep_scores(ctx, genome, snaps, cl) if finite else None
                    sweep = sweep or {}
                    sweep["_seconds"] = sec["sweep"]
            if need_fwd:
                t0 = time.perf_counter()
                stats = zero_cost.forward_stats(self.model, self.adapter, batches, genome, selection,
                                                reference=ctx.reference, naswot_tokens=cfg.naswot_tokens,
                                                naswot_seed=ctx.seed, micro_batch=cfg.micro_batch,
                                                want=tuple({"ppl": "nll"}.get(n, n) for n in need_fwd))
                dt = time.perf_counter() - t0
                for n in need_fwd:
                    scores[n] = -stats["nll"] if n == "ppl" else -stats["kl"] if n == "kl" else stats["naswot"]
                    cost[n] = dt
            if "synflow" in names:
                t0 = time.perf_counter()
                scores["synflow"] = synflow(self.model, self.adapter, batches[:1], genome)
                cost["synflow"] = time.perf_counter() - t0
            if "params" in names:
                scores["params"], cost["params"] = float(self.space.params(genome)), 0.0
            for n, scorer in others.items():
                t0 = time.perf_counter()  # its own fn, with the candidate's masks already applied
                scores[n] = float(proxy_mod.CUSTOM_PROXIES[n](self.model, self.adapter, batches, genome, scorer))
                cost[n] = time.perf_counter() - t0
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
            out[f"N={n}"] = trace_score("phi", c, b, genome).score
        for length in _ints(cfg.sweep_cl):
            out[f"CL={length}"] = out[f"N={self.n_main}"] if length == cfg.seq_len else \
                trace_score("phi", cl[length], ctx.base_cl[length], genome).score
        for r in _ints(cfg.sweep_rank):
            lo, hi = ctx.blocks[r]
            out[f"r={r}"] = trace_score("phi", _block(snaps[self.n_main], lo, hi),
                                        _block(ctx.base_snaps[self.n_main], lo, hi), genome).score
        return out


# --------------------------------------------------------------------------- records (resume)


def append_record(path: Path, record: dict) -> None:
    """Append one JSON line with a single write (O_APPEND): concurrent ranks never interleave lines."""
    data = (json.dumps(record, default=_json_default) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, data)
        if written != len(data):
            raise OSError(f"short write to {path}")
        os.fsync(fd)
    finally:
        os.close(fd)


def _json_default(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    raise TypeError(type(x))


def _jf(x: float) -> float | str:
    return float(x) if math.isfinite(float(x)) else str(float(x))


def read_records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for n, line in enumerate(path.read_text().splitlines()):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("%s line %d is not valid JSON (a write cut short?); it will be recomputed", path.name, n + 1)
    return out


def repair_tail(path: Path) -> None:
    """Drop a torn last line (no trailing newline) so that the next append starts a fresh line."""
    if not path.exists() or path.stat().st_size == 0:
        return
    text = path.read_bytes()
    if not text.endswith(b"\n"):
        cut = text.rfind(b"\n") + 1
        log.warning("dropping a torn last record of %s (%d bytes)", path.name, len(text) - cut)
        with open(path, "r+b") as fh:
            fh.truncate(cut)


class Records:
    """Index of candidates.jsonl: what is done, and the merged values."""

    def __init__(self, records: list[dict], candidates: list[tuple[Genome, str]]):
        keys = [g.key() for g, _ in candidates]
        self.truth: dict[int, dict] = {}
        self.proxy: dict[tuple[int, int], dict] = defaultdict(lambda: {"scores": {}, "seconds": {}})
        self.sweep: dict[tuple[int, int], dict] = {}
        self.base: dict | None = None
        for r in records:
            kind = r.get("type")
            if kind == "base":
                self.base = r
                continue
            i = r.get("index")
            if not isinstance(i, int) or i >= len(keys) or r.get("key") != keys[i]:
                continue  # a candidate of another sample: ignore
            if kind == "truth":
                self.truth[i] = r
            elif kind == "proxy":
                p = self.proxy[(i, r["seed"])]
                p["scores"].update(r["scores"])
                p["seconds"].update(r.get("seconds", {}))
            elif kind == "sweep":
                self.sweep[(i, r["seed"])] = r

    def missing_proxies(self, i: int, seed: int, names: list[str]) -> list[str]:
        have = self.proxy[(i, seed)]["scores"] if (i, seed) in self.proxy else {}
        return [n for n in names if n not in have]


# --------------------------------------------------------------------------- statistics and reports


def rank_correlations(scores, ppl) -> dict[str, float]:
    """Spearman ρ and Kendall τ(-b) of proxy scores against -ppl (higher proxy = lower ppl = better)."""
    from scipy import stats

    x = np.asarray([float(s) for s in scores], dtype=float)
    y = -np.asarray([float(p) for p in ppl], dtype=float)
    ok = ~(np.isnan(x) | np.isnan(y))
    x, y = x[ok], y[ok]
    if len(x) < 3 or np.unique(x).size < 2 or np.unique(y).size < 2:
        return {"spearman": float("nan"), "kendall": float("nan"), "n": len(x)}
    # ranks first: scipy's correlations reject infinities, a rank does not care
    rx, ry = stats.rankdata(x), stats.rankdata(y)
    return {"spearman": float(stats.spearmanr(rx, ry)[0]), "kendall": float(stats.kendalltau(rx, ry)[0]),
            "n": len(x)}


def _mean_std(values: list[float]) -> dict:
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=float)
    if v.size == 0:
        return {"mean": float("nan"), "std": float("nan"), "per_seed": values}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0, "per_seed": values}


def _score_value(x) -> float:
    return float(x)  # also "-inf" / "nan", as JSON records store non-finite scores


def summarize(cfg: ValidateConfig, candidates: list[tuple[Genome, str]], recs: Records, names: list[str]) -> dict:
    """Correlations of every proxy with every ground truth, per seed, then mean and std over seeds."""
    steps = cfg.steps
    done = [i for i in range(len(candidates)) if i in recs.truth]
    ppl = {s: {i: recs.truth[i]["ppl"][str(s)] for i in done} for s in steps}
    final = max(steps)
    res: dict[str, Any] = {"candidates": len(done), "steps": steps, "proxies": {}, "ground_truth": {}}
    for n in names:
        entry: dict[str, Any] = {"label": LABELS.get(n, n), "cost_seconds": None, "vs": {}}
        costs, picks = [], []
        for s in steps:
            per = {"spearman": [], "kendall": []}
            for seed in range(cfg.seeds):
                have = [i for i in done if (i, seed) in recs.proxy and n in recs.proxy[(i, seed)]["scores"]]
                if len(have) < 3:
                    continue
                sc = [_score_value(recs.proxy[(i, seed)]["scores"][n]) for i in have]
                c = rank_correlations(sc, [ppl[s][i] for i in have])
                per["spearman"].append(c["spearman"])
                per["kendall"].append(c["kendall"])
                if s == final:
                    best = have[int(np.nanargmax(np.where(np.isnan(sc), -np.inf, sc)))]
                    order = sorted(have, key=lambda i: ppl[s][i])
                    picks.append(order.index(best) + 1)
                    costs += [recs.proxy[(i, seed)]["seconds"].get(n) for i in have
                              if recs.proxy[(i, seed)]["seconds"].get(n) is not None]
            entry["vs"][str(s)] = {"spearman": _mean_std(per["spearman"]), "kendall": _mean_std(per["kendall"])}
        entry["cost_seconds"] = float(np.mean(costs)) if costs else None
        entry["pick_rank"] = _mean_std([float(p) for p in picks])
        res["proxies"][n] = entry
    gt = {}
    for s in steps:
        c = rank_correlations([-ppl[s][i] for i in done], [ppl[final][i] for i in done])
        gt[str(s)] = {"vs_final": c, "median_ppl": float(np.median([ppl[s][i] for i in done])) if done else None}
    res["ground_truth"] = gt
    fam = defaultdict(list)
    for i in done:
        fam[candidates[i][1]].append(ppl[final][i])
    res["families"] = {f: {"n": len(v), "median_ppl": float(np.median(v))} for f, v in fam.items()}
    return res


def _fmt(ms: dict) -> str:
    m, s = ms["mean"], ms["std"]
    if m is None or math.isnan(m):
        return "–"
    n = sum(1 for x in ms.get("per_seed", []) if x is not None and not math.isnan(x))
    return f"{m:.2f}" if n <= 1 else f"{m:.2f} ± {s:.2f}"  # no spread to show for one seed


def format_table(summary: dict, title: str = "") -> str:
    """Markdown like Table 1: SP / KT per ground truth, best bold, second underlined (by mean)."""
    steps = [str(s) for s in summary["steps"]]
    names = list(summary["proxies"])
    cols = [(s, k) for s in steps for k in ("spearman", "kendall")]
    best: dict[tuple, list[float]] = {}
    for col in cols:
        vals = sorted({round(summary["proxies"][n]["vs"][col[0]][col[1]]["mean"], 2) for n in names
                       if not math.isnan(summary["proxies"][n]["vs"][col[0]][col[1]]["mean"])}, reverse=True)
        best[col] = vals[:2]
    head = "| Proxy | " + " | ".join(f"{'PPL zero-shot' if s == '0' else f'PPL @ {s} steps'} {'SP' if k == 'spearman' else 'KT'}"
                                     for s, k in cols) + " | pick rank | s / cand |"
    lines = [title, "", head, "|" + "---|" * (len(cols) + 3)] if title else [head, "|" + "---|" * (len(cols) + 3)]
    for n in names:
        e = summary["proxies"][n]
        cells = []
        for col in cols:
            ms = e["vs"][col[0]][col[1]]
            text = _fmt(ms)
            r = round(ms["mean"], 2) if not math.isnan(ms["mean"]) else None
            if r is not None and best[col] and r == best[col][0]:
                text = f"**{text}**"
            elif r is not None and len(best[col]) > 1 and r == best[col][1]:
                text = f"<u>{text}</u>"
            cells.append(text)
        pick = e["pick_rank"]["mean"]
        cost = e["cost_seconds"]
        lines.append(f"| {e['label']} (`{n}`) | " + " | ".join(cells) +
                     f" | {'–' if math.isnan(pick) else f'{pick:.1f}'} | {'–' if cost is None else f'{cost:.2f}'} |")
    gt = summary["ground_truth"]
    lines += ["", "Ground truth vs itself (Spearman / Kendall of perplexity at each budget vs the longest recovery):", "",
              "| recovery steps | median PPL | SP vs final | KT vs final |", "|---|---|---|---|"]
    for s in steps:
        c = gt[s]["vs_final"]
        med = gt[s]["median_ppl"]
        lines.append(f"| {s} | {'–' if med is None else f'{med:.1f}'} | {c['spearman']:.2f} | {c['kendall']:.2f} |")
    return "\n".join(lines) + "\n"


def plot_scatter(cfg: ValidateConfig, candidates, recs: Records, names: list[str], summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    final = str(max(cfg.steps))
    done = [i for i in range(len(candidates)) if i in recs.truth]
    cols = 4
    rows = max(1, math.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.3 * rows), squeeze=False)
    colors = {"width": "tab:blue", "depth": "tab:red", "mixed": "tab:green"}
    for ax, n in zip(axes.flat, names):
        for fam in FAMILIES:
            xs, ys = [], []
            for i in done:
                if candidates[i][1] != fam:
                    continue
                vals = [_score_value(recs.proxy[(i, s)]["scores"][n]) for s in range(cfg.seeds)
                        if (i, s) in recs.proxy and n in recs.proxy[(i, s)]["scores"]]
                vals = [v for v in vals if math.isfinite(v)]
                if vals:
                    xs.append(float(np.mean(vals)))
                    ys.append(recs.truth[i]["ppl"][final])
            ax.scatter(xs, ys, s=14, alpha=0.8, color=colors[fam], label=fam)
        e = summary["proxies"][n]["vs"][final]
        ax.set_yscale("log")
        ax.set_title(f"{LABELS.get(n, n)}\nSP {_fmt(e['spearman'])}  KT {_fmt(e['kendall'])}", fontsize=8)
        ax.set_xlabel(f"{n} (mean over seeds)", fontsize=8)
        ax.set_ylabel(f"PPL after {final} steps", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def summarize_sweep(cfg: ValidateConfig, candidates, recs: Records) -> dict:
    """Kendall τ of Φ rankings at each setting vs the category's reference, and each setting vs ground truth."""
    from scipy import stats

    final, done = max(cfg.steps), [i for i in range(len(candidates)) if i in recs.truth]
    out: dict[str, Any] = {}
    for cat, values in (("N", _ints(cfg.sweep_n)), ("CL", _ints(cfg.sweep_cl)), ("r", _ints(cfg.sweep_rank))):
        ref = f"{cat}={max(values)}"
        rows = {}
        for v in values:
            key = f"{cat}={v}"
            tau_ref, sp_gt, kt_gt, sp_zs, kt_zs = [], [], [], [], []
            for seed in range(cfg.seeds):
                have = [i for i in done if (i, seed) in recs.sweep and key in recs.sweep[(i, seed)]["scores"]]
                if len(have) < 3:
                    continue
                x = [_score_value(recs.sweep[(i, seed)]["scores"][key]) for i in have]
                r = [_score_value(recs.sweep[(i, seed)]["scores"][ref]) for i in have]
                tau_ref.append(float(stats.kendalltau(stats.rankdata(x), stats.rankdata(r))[0]))
                c = rank_correlations(x, [recs.truth[i]["ppl"][str(final)] for i in have])
                z = rank_correlations(x, [recs.truth[i]["ppl"]["0"] for i in have]) if 0 in cfg.steps else None
                sp_gt.append(c["spearman"])
                kt_gt.append(c["kendall"])
                if z:
                    sp_zs.append(z["spearman"])
                    kt_zs.append(z["kendall"])
            rows[str(v)] = {"tau_vs_ref": _mean_std(tau_ref), "spearman_final": _mean_std(sp_gt),
                            "kendall_final": _mean_std(kt_gt), "spearman_zero_shot": _mean_std(sp_zs),
                            "kendall_zero_shot": _mean_std(kt_zs)}
        out[cat] = {"reference": ref, "rows": rows}
    cost = [recs.sweep[k].get("seconds") for k in recs.sweep if recs.sweep[k].get("seconds") is not None]
    out["extra_seconds_per_candidate"] = float(np.mean(cost)) if cost else None
    return out


def format_sweep(sweep: dict, final: int) -> str:
    names = {"N": "calibration sequences N", "CL": "context length CL", "r": "LoRA rank r"}
    lines = []
    for cat in ("N", "CL", "r"):
        s = sweep[cat]
        lines += [f"### {names[cat]} (reference {s['reference']})", "",
                  (f"| {cat} | KT vs reference | SP vs PPL@{final} | KT vs PPL@{final} | SP vs PPL zero-shot | "
                   "KT vs PPL zero-shot |"), "|---|---|---|---|---|---|"]
        for v, row in s["rows"].items():
            lines.append(f"| {v} | {_fmt(row['tau_vs_ref'])} | {_fmt(row['spearman_final'])} | "
                         f"{_fmt(row['kendall_final'])} | {_fmt(row['spearman_zero_shot'])} | "
                         f"{_fmt(row['kendall_zero_shot'])} |")
        lines.append("")
    return "\n".join(lines)


def plot_sweep(sweep: dict, final: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, cat in zip(axes, ("N", "CL", "r")):
        rows = sweep[cat]["rows"]
        xs = [int(v) for v in rows]
        for key, label, style in (("tau_vs_ref", f"KT vs {sweep[cat]['reference']}", "-o"),
                                  ("kendall_final", f"KT vs PPL@{final}", "-s"),
                                  ("spearman_final", f"SP vs PPL@{final}", "--^")):
            ys = [rows[str(x)][key]["mean"] for x in xs]
            err = [rows[str(x)][key]["std"] for x in xs]
            ax.errorbar(xs, ys, yerr=err, fmt=style, capsize=3, label=label)
        ax.set_xscale("log", base=2)
        ax.set_xlabel(cat)
        ax.set_ylim(-0.2, 1.05)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("rank correlation")
    fig.suptitle("Φ stability (Fig. 3-like): one factor varied, the others at the main setting", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_reports(out: Path, cfg: ValidateConfig, candidates, names: list[str], model_name: str = "",
                  extra: dict | None = None) -> dict:
    recs = Records(read_records(out / "candidates.jsonl"), candidates)
    summary = summarize(cfg, candidates, recs, names)
    summary["base"] = recs.base
    summary.update(extra or {})
    title = (f"## Proxy validation: {summary['candidates']} candidates at budget {cfg.budget} of {model_name or 'the model'}"
             f", {cfg.seeds} proxy seed(s)\n\nSpearman (SP) / Kendall (KT) of proxy vs −PPL (held-out, "
             f"{cfg.eval_sequences}×{cfg.eval_seq_len} tokens), mean ± std over seeds. Recovery: "
             f"{cfg.recover_batch}×{cfg.recover_seq_len} tokens/step, lr {cfg.recover_lr}. "
             f"Calibration {cfg.num_sequences}×{cfg.seq_len}, r={cfg.rank}. 'pick rank': true rank (1 = best) "
             f"of the candidate the proxy scores highest. 's / cand': seconds of the passes the proxy needs alone.")
    atomic_write_text(out / "table.md", format_table(summary, title))
    if summary["candidates"] >= 1:
        plot_scatter(cfg, candidates, recs, names, summary, out / "scatter.png")
    if cfg.sweep:
        sw = summarize_sweep(cfg, candidates, recs)
        summary["sweep"] = sw
        atomic_write_json(out / "sweep.json", sw)
        atomic_write_text(out / "sweep.md", "## Φ stability sweep\n\n" + format_sweep(sw, max(cfg.steps)))
        plot_sweep(sw, max(cfg.steps), out / "sweep.png")
    atomic_write_json(out / "results.json", {"config": dataclasses.asdict(cfg), **summary})
    return summary


# --------------------------------------------------------------------------- the run


def _init_dist() -> tuple[int, int, bool]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("gloo", timeout=timedelta(hours=24))
        return dist.get_rank(), dist.get_world_size(), True
    return 0, 1, False


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def proxy_names(cfg: ValidateConfig) -> list[str]:
    avail = list(proxy_mod.available_proxies())
    if cfg.proxies.strip() == "all":
        names = list(BUILTIN) + [n for n in avail if n not in BUILTIN]
    else:
        names = [n.strip() for n in cfg.proxies.split(",") if n.strip()]
        bad = [n for n in names if n not in avail and n not in VARIANTS]
        if bad:
            raise TracenasError(f"unknown proxies {', '.join(bad)}; available: {', '.join(avail + list(VARIANTS))}")
    if cfg.variants:
        names += [v for v in VARIANTS if v not in names]
    return names


def _check_resume(out: Path, cfg: ValidateConfig) -> None:
    saved_path = out / "validate.yaml"
    if not saved_path.exists():
        return
    saved = yaml.safe_load(saved_path.read_text()) or {}
    now = dataclasses.asdict(cfg)
    diff = sorted(k for k in now if k in saved and k not in _RESUMABLE and k != "out" and saved[k] != now[k]
                  and not (k == "min_layers" and now[k] is None))  # None = the default, saved resolved
    if diff:
        raise RunDirError(f"{out} holds a validation with other settings ({', '.join(diff)}); it cannot be resumed "
                          "with these: choose another --out")


def run_validation(cfg: ValidateConfig, *, model: nn.Module | None = None, tokenizer=None,
                   progress: bool = True) -> ValidationResult:
    """Sample candidates, compute what candidates.jsonl lacks (this rank's share), then write the reports."""
    from tracenas.models import get_adapter, load_model
    from tracenas.search.runner import _attach_log, resolve_device, resolve_dtype

    cfg = cfg.resolved()
    out = Path(cfg.out)
    rank, world, own_group = _init_dist()
    t_start = time.perf_counter()
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        _check_resume(out, cfg)
        repair_tail(out / "candidates.jsonl")
    _barrier(world)
    handler = _attach_log(out, "validate" if rank == 0 else f"validate.rank{rank}")
    try:
        device = resolve_device(cfg.device)
        if device.type == "cuda" and world > 1 and device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        dtype = resolve_dtype(cfg.dtype, device)
        source = None
        if model is None:  # fp32: the ground truth slices these weights; the proxies get a `dtype` copy
            model, tokenizer, source = load_model(cfg.model, dtype=torch.float32, device=device)
        model_name = (source.spec if source is not None else cfg.model) or "model"
        adapter = get_adapter(model)
        shape = adapter.shape()
        min_layers = cfg.min_layers if cfg.min_layers is not None else max(1, shape.num_layers // 2)
        space = SearchSpace(shape, min_layers=min_layers, include_embeddings=cfg.include_embeddings)
        budget = space.resolve_budget(cfg.budget)
        names = proxy_names(cfg)
        candidates = sample_candidates(space, budget, cfg.num_candidates, cfg.seed, cfg.budget_tolerance)
        if rank == 0:
            # nothing but fields: `--config OUT/validate.yaml` reruns the same study
            save_config(out, "validate", dataclasses.replace(cfg, min_layers=min_layers))
            atomic_write_json(out / "candidates.json", [
                {"index": i, "family": f, "key": g.key(), "params": space.params(g), "kept_blocks": sum(g.keep),
                 "genome": g.to_dict()} for i, (g, f) in enumerate(candidates)])
        log.info("%d candidates at %s of %s parameters (window %.0f%%), %d proxies, %d seed(s), rank %d of %d",
                 len(candidates), format_count(budget), format_count(space.base_params()),
                 100 * cfg.budget_tolerance, len(names), cfg.seeds, rank, world)
        if not cfg.report_only:
            _compute(cfg, out, model, adapter, space, tokenizer, candidates, names, rank, world, progress, dtype)
        _barrier(world)
        summary = {}
        if rank == 0:
            summary = write_reports(out, cfg, candidates, names, model_name,
                                    extra={"budget_params": budget, "base_params": space.base_params(),
                                           "min_layers": min_layers, "world_size": world})
        _barrier(world)
        seconds = time.perf_counter() - t_start
        log.info("validation done in %.0f s -> %s", seconds, out / "table.md")
        return ValidationResult(out, summary, len(candidates), seconds)
    finally:
        logging.getLogger("tracenas").removeHandler(handler)
        handler.close()
        if own_group:
            import torch.distributed as dist

            dist.destroy_process_group()


def _compute(cfg, out, model, adapter, space, tokenizer, candidates, names, rank, world, progress,
             dtype: torch.dtype) -> None:
    from tracenas import data
    from tracenas.evaluate import perplexity

    path = out / "candidates.jsonl"
    recs = Records(read_records(path), candidates)
    steps = cfg.steps
    eval_tokens = data.token_batches(tokenizer, cfg.data, split="eval", num_sequences=cfg.eval_sequences,
                                     seq_len=cfg.eval_seq_len)
    train_tokens = data.token_batches(tokenizer, cfg.data, split="train",
                                      num_sequences=max(1, max(steps) * cfg.recover_batch), seq_len=cfg.recover_seq_len)
    mine = [i for i in range(len(candidates)) if i % world == rank]
    todo = [i for i in mine if i not in recs.truth or any(recs.missing_proxies(i, s, names) for s in range(cfg.seeds))
            or (cfg.sweep and any((i, s) not in recs.sweep for s in range(cfg.seeds)))]
    autocast = torch.bfloat16 if cfg.recover_dtype == "bfloat16" else None
    device = next(model.parameters()).device
    if rank == 0 and recs.base is None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast is not None):
            r = perplexity(model, eval_tokens, seq_len=cfg.eval_seq_len, micro_batch=cfg.micro_batch,
                           chunk=cfg.loss_chunk)
        append_record(path, {"type": "base", "ppl": r["ppl"], "nll": r["nll"], "params": space.base_params()})
        log.info("base model: eval perplexity %.2f", r["ppl"])
    log.info("rank %d: %d of its %d candidates have work left", rank, len(todo), len(mine))
    if not todo:
        return
    from tracenas.models import get_adapter

    probe = Validator(cfg, model, adapter, space, tokenizer)  # importance from the fp32 weights
    if dtype != next(model.parameters()).dtype:
        pmodel = copy.deepcopy(model).to(dtype)
        validator = Validator(cfg, pmodel, get_adapter(pmodel), space, tokenizer, importance=probe.importance)
        validator._windows = probe._windows
    else:
        validator = probe
    from tqdm.auto import tqdm

    bar = tqdm(total=len(mine), initial=len(mine) - len(todo), desc=f"validate[{rank}]" if world > 1 else "validate",
               unit="cand", dynamic_ncols=True, disable=not progress)
    try:
        for i in todo:
            genome, family = candidates[i]
            key = genome.key()
            if i not in recs.truth:
                sel = select(space, genome, validator.importance)
                t = ground_truth(model, adapter, sel, eval_tokens, train_tokens, steps, lr=cfg.recover_lr,
                                 batch_size=cfg.recover_batch, micro_batch=cfg.micro_batch, seed=cfg.seed,
                                 loss_chunk=cfg.loss_chunk, autocast=autocast)
                rec = {"type": "truth", "index": i, "key": key, "family": family, **t}
                append_record(path, rec)
                recs.truth[i] = rec
                log.info("candidate %d (%s, %d blocks): ppl %s in %.0f s", i, family, sum(genome.keep),
                         ", ".join(f"{s}: {p:.1f}" for s, p in t["ppl"].items()), t["seconds"]["total"])
            for seed in range(cfg.seeds):
                missing = recs.missing_proxies(i, seed, names)
                need_sweep = cfg.sweep and (i, seed) not in recs.sweep
                if not missing and not need_sweep:
                    continue
                ctx = validator.context(seed)
                scores, cost, sweep = validator.score(ctx, genome, missing, need_sweep)
                if missing:
                    rec = {"type": "proxy", "index": i, "key": key, "seed": seed,
                           "scores": {k: _jf(v) for k, v in scores.items()},
                           "seconds": {k: round(v, 4) for k, v in cost.items()}}
                    if validator.last_rho is not None:
                        rec["rho"] = {k: [None if x is None else round(x, 6) for x in v]
                                      for k, v in validator.last_rho.items()}
                    append_record(path, rec)
                    recs.proxy[(i, seed)]["scores"].update(scores)
                if need_sweep:
                    sec = sweep.pop("_seconds", None) if sweep else None
                    append_record(path, {"type": "sweep", "index": i, "key": key, "seed": seed,
                                         "scores": {k: _jf(v) for k, v in (sweep or {}).items()}, "seconds": sec})
                    recs.sweep[(i, seed)] = {"scores": sweep or {}}
            bar.update(1)
            if "phi" in names and (i, 0) in recs.proxy:
                bar.set_postfix(ppl=f"{recs.truth[i]['ppl'][str(max(steps))]:.1f}",
                                phi=f"{_score_value(recs.proxy[(i, 0)]['scores'].get('phi', float('nan'))):.3f}")
    finally:
        bar.close()


__all__ = ["PRESETS", "ValidateConfig", "ValidationResult", "Validator", "ground_truth", "rank_correlations",
           "run_validation", "sample_candidates", "short_recover", "summarize", "variant_scores", "write_reports"]
