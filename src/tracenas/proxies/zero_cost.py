"""Classic zero-cost proxies and forward-only fitness, adapted to pruned pretrained LLMs.

    scorer = Scorer(model, adapter, space, importance, batches, proxy="kl")  # the registry imports this module
    score, info = scorer.score(genome)                 # kl's prepare hook cached the base outputs first
    zero_cost.forward_stats(model, adapter, batches, genome, want=("nll", "kl", "naswot"), reference=...)

Every proxy here is "higher is better" and is evaluated with the candidate's masks applied. The
entries of `tracenas.proxies.registry` point at the method objects at the end of this module
(NASWOT, ZICO, PPL, KL): each scores a candidate alone for `Scorer`, and from a shared forward or
trace pass for the validator. The adaptations to LLMs (docs/proxy-validation.md has the
full discussion):

* **naswot** (Mellor et al., 2021): log|K_H| with K_H[i, j] = N_A - Hamming(c_i, c_j). Units are the
  *kept* MLP channels of the kept blocks (a pruned channel does not exist in the sliced model, so
  it is left out rather than counted as an always-off unit); the binary code of a unit is the sign of
  its gate pre-activation (SwiGLU: act(g) > 0 iff g > 0); the kernel is over a fixed, seeded
  subsample of calibration *tokens* (not images), `naswot_tokens` of them. Score = log|K_H + I|
  (the identity only matters when there are fewer units than tokens, where K_H is singular).
* **zico** (Li et al., 2023): Σ over kept projections of log Σ_coords E|g| / std(g), across the
  calibration *sequences* as the samples (one trace per sequence), using the LoRA-B traces (the weight gradient projected on
  the fixed random A, like Φ) instead of full weight gradients: the same statistics on a 64-dim
  random projection of every row, at a fraction of the memory. Coordinates whose std is zero
  (pruned rows: identically zero) are skipped, as in the reference implementation.
* **ppl**: calibration perplexity of the masked model; score = -mean NLL (monotone in -ppl), the
  fitness of training-aware searches without their training (DarwinLM-style).
* **kl**: -mean over calibration positions of KL(p_base || p_candidate) of the next-token
  distributions (the supernet/distillation fitness of Týr-the-Pruner-style methods). The base
  model's *final hidden states* are cached (tokens x hidden floats, small) instead of its log-probs
  (tokens x vocab): base logits are recomputed chunk by chunk through the unchanged lm_head, so
  the KL is exact and no vocabulary-sized tensor is ever stored. `prepare_reference` must run on
  the unmasked model before scoring.
"""

from __future__ import annotations

import functools
import logging
import math
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tracenas.arch import Genome
from tracenas.runtime.errors import TracenasError
from tracenas.runtime.losses import chunked_sum, head_logits
from tracenas.prune.masking import LayerSelection, SkipLayer, select
from tracenas.models.adapter import ModelAdapter
from tracenas.proxies.traces import FunctionProxy, TracePass, TraceProbes, Traces, TraceScore

log = logging.getLogger(__name__)

ZERO_COST_PROXIES = ("naswot", "zico", "ppl", "kl")
NASWOT_TOKENS = 256
KL_CHUNK = 512  # positions per chunk of base + candidate logits (2 x chunk x vocab floats at a time)


# --------------------------------------------------------------------------- forward reference (kl)


@dataclass
class ForwardReference:
    """The base model's final hidden states on one calibration set (what `kl` compares against)."""

    hidden: torch.Tensor  # [N, L, H] float32, on the model's device
    fingerprint: tuple
    # the base model's output layer (weight, bias); None: the scored model's own, unchanged head. A candidate
    # that was trained (darwinlm fine-tunes every parameter) needs the base head kept apart.
    head: tuple[torch.Tensor, torch.Tensor | None] | None = None

    @property
    def tokens(self) -> int:
        return self.hidden.shape[0] * self.hidden.shape[1]


_REFERENCES: weakref.WeakKeyDictionary[nn.Module, dict[tuple, ForwardReference]] = weakref.WeakKeyDictionary()


def _fingerprint(batches: torch.Tensor) -> tuple:
    # content, not identity: a batch tensor rebuilt with the same ids finds its reference again
    b = batches.detach().cpu().long()
    return tuple(b.shape), int((b * torch.arange(1, b.numel() + 1).view_as(b) % 1_000_003).sum()), int(b.sum())


@torch.no_grad()
def prepare_reference(model: nn.Module, adapter: ModelAdapter, batches: torch.Tensor,
                      micro_batch: int = 1) -> ForwardReference:
    """Cache the unmasked model's final hidden states on `batches` (call before any masking)."""
    device = next(model.parameters()).device
    parts = [adapter.final_hidden(batches[s:s + micro_batch].to(device)).float()
             for s in range(0, batches.shape[0], micro_batch)]
    ref = ForwardReference(torch.cat(parts), _fingerprint(batches))
    _REFERENCES.setdefault(model, {})[ref.fingerprint] = ref
    return ref


def get_reference(model: nn.Module, batches: torch.Tensor) -> ForwardReference | None:
    return _REFERENCES.get(model, {}).get(_fingerprint(batches))


def clear_references(model: nn.Module | None = None) -> None:
    if model is None:
        _REFERENCES.clear()
    else:
        _REFERENCES.pop(model, None)


# --------------------------------------------------------------------------- one forward: nll, kl, naswot


def naswot_positions(num_tokens: int, sample: int, seed: int = 0) -> torch.Tensor:
    """A fixed seeded subsample of flattened [N*L] token positions (sorted), the same for every candidate."""
    if sample >= num_tokens:
        return torch.arange(num_tokens)
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(num_tokens, generator=g)[:sample].sort().values


def naswot_logdet(codes: torch.Tensor) -> float:
    """log|K_H + I| for binary codes [T, U]: K_H = C Cᵀ + (1-C)(1-C)ᵀ = U - Hamming distance.

    K_H has rank <= U + 2, so with fewer units than tokens (a heavily pruned small model) it is
    singular; the identity keeps the score finite and, with thousands of units (entries ~U), changes
    each log-eigenvalue by ~1/λ only.
    """
    if codes.shape[1] == 0:
        return float("-inf")
    c = codes.float()
    k = c @ c.T + (1 - c) @ (1 - c).T  # integer counts, exact in float32 up to 2^24 units
    k = k.double() + torch.eye(k.shape[0], dtype=torch.float64)
    return float(torch.linalg.slogdet(k)[1])


def _check_reference(reference: ForwardReference | None, n: int, length: int) -> None:
    if reference is None:
        raise TracenasError("kl needs the base model's outputs: call tracenas.proxies.zero_cost.prepare_reference("
                            "model, adapter, batches) on the unmasked model before scoring")
    if tuple(reference.hidden.shape[:2]) != (n, length):
        raise TracenasError(f"kl reference was computed on {tuple(reference.hidden.shape[:2])} tokens, "
                            f"not on the {(n, length)} scored now")


class _GateCodes:
    """naswot's binary unit codes, collected by forward hooks: the sign of each kept block's MLP gate
    pre-activation (kept channels only, given a `selection`) at the sampled token positions."""

    def __init__(self, adapter: ModelAdapter, keep: tuple[bool, ...], selection: list[LayerSelection] | None,
                 positions: torch.Tensor, device: torch.device):
        self.positions = positions  # flattened [N*L] positions, sorted
        self.rows: torch.Tensor | None = None  # those in the current micro-batch, flattened
        self.codes: dict[int, list[torch.Tensor]] = {}
        self.hooks = []
        layers = adapter.layers()
        for i, k in enumerate(keep):
            if not k:
                continue
            gate = adapter.mlp_proj(layers[i], "gate_proj")
            chans = None
            if selection is not None and len(selection[i].channels) < gate.out_features:
                chans = torch.tensor(selection[i].channels, dtype=torch.long, device=device)
            self.hooks.append(gate.register_forward_hook(functools.partial(self._record, i, chans)))

    def _record(self, i: int, chans: torch.Tensor | None, _mod, _args, out: torch.Tensor) -> None:
        rows = self.rows
        if rows is None or rows.numel() == 0:
            return
        flat = out.reshape(-1, out.shape[-1]).index_select(0, rows)
        if chans is not None:
            flat = flat.index_select(1, chans)
        self.codes.setdefault(i, []).append((flat > 0).cpu())

    def select(self, lo: int, hi: int, device: torch.device) -> None:
        """The next forward pass covers flattened positions [lo, hi)."""
        sel = self.positions[(self.positions >= lo) & (self.positions < hi)] - lo
        self.rows = sel.to(device)

    def remove(self) -> None:
        for hk in self.hooks:
            hk.remove()

    def logdet(self) -> float:
        blocks = [torch.cat(self.codes[i]) for i in sorted(self.codes)]
        return naswot_logdet(torch.cat(blocks, dim=1)) if blocks else float("-inf")


@dataclass
class _ChunkSums:
    """(summed NLL, summed KL(base || candidate)) of one chunk of positions: one log-softmax per chunk serves
    both statistics; float64 sums of the float32 chunk sums (`zero` for a statistic not wanted)."""

    head: nn.Module
    reference: ForwardReference | None
    want: tuple[str, ...]
    kl_topk: int
    zero: torch.Tensor

    def __call__(self, h: torch.Tensor, t: torch.Tensor, *base: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        head = self.head
        logp = F.log_softmax(head_logits(h, head.weight, head.bias), dim=-1)
        nll = self.zero
        if "nll" in self.want:
            nll = F.nll_loss(logp.reshape(-1, logp.shape[-1]), t.reshape(-1), reduction="sum").double()
        kl = self.zero
        if base:
            w, b = self.reference.head if self.reference.head is not None else (head.weight, head.bias)
            base_logits = head_logits(base[0].to(h.dtype), w, b)
            if self.kl_topk:
                top, idx = base_logits.topk(min(self.kl_topk, base_logits.shape[-1]), dim=-1)
                base_lp = F.log_softmax(top, dim=-1)
                cand_lp = F.log_softmax(logp.gather(-1, idx), dim=-1)
                kl = F.kl_div(cand_lp, base_lp, log_target=True, reduction="sum").double()
            else:
                base_logp = F.log_softmax(base_logits, dim=-1)
                kl = F.kl_div(logp, base_logp, log_target=True, reduction="sum").double()
        return nll, kl


@torch.no_grad()
def forward_stats(model: nn.Module, adapter: ModelAdapter, batches: torch.Tensor, genome: Genome | None = None,
                  selection: list[LayerSelection] | None = None, *, reference: ForwardReference | None = None,
                  naswot_tokens: int = NASWOT_TOKENS, naswot_seed: int = 0, micro_batch: int = 1,
                  kl_chunk: int = KL_CHUNK, want: tuple[str, ...] = ("nll", "kl", "naswot"),
                  kl_topk: int = 0) -> dict[str, float]:
    """One forward pass over `batches` of the (masked) model; returns the requested statistics.

    `nll`: mean next-token NLL (positions 0..L-2). `kl`: mean KL(base || candidate) over the same
    positions (needs `reference`); with `kl_topk` = k > 0 the top-k "sparse" KL of Týr's code instead: both
    distributions restricted to the base model's k most likely tokens and renormalized there. `naswot`: log-det of the Hamming kernel of the MLP gate codes at a
    fixed token subsample; kept blocks only, and kept channels only when `selection` is given.
    """
    n, length = batches.shape
    device = next(model.parameters()).device
    keep = genome.keep if genome is not None else (True,) * len(adapter.layers())
    if "kl" in want:
        _check_reference(reference, n, length)
    codes = None
    if "naswot" in want:
        codes = _GateCodes(adapter, keep, selection, naswot_positions(n * length, naswot_tokens, naswot_seed), device)
    zero = torch.zeros((), dtype=torch.float64, device=device)
    chunk_sums = _ChunkSums(adapter.lm_head(), reference, want, kl_topk, zero)
    sums, count = (zero, zero), 0
    try:
        for s in range(0, n, micro_batch):
            ids = batches[s:s + micro_batch].to(device)
            m = ids.shape[0]
            if codes is not None:
                codes.select(s * length, (s + m) * length, device)
            hidden = adapter.final_hidden(ids)[:, :-1]
            base = (reference.hidden[s:s + m, :-1],) if "kl" in want else ()
            sums = chunked_sum(chunk_sums, kl_chunk, hidden, ids[:, 1:], *base, start=sums)
            count += m * (length - 1)
    finally:
        if codes is not None:
            codes.remove()
    out: dict[str, float] = {}
    if "nll" in want:
        out["nll"] = float(sums[0]) / count
    if "kl" in want:
        out["kl"] = float(sums[1]) / count
    if codes is not None:
        out["naswot"] = codes.logdet()
    return out


# --------------------------------------------------------------------------- zico


class ZicoAccumulator:
    """Running per-coordinate Σg, Σg², Σ|g| over samples of LoRA-B traces (one `add` per sample)."""

    def __init__(self) -> None:
        self.n = 0
        self.sum: dict = {}
        self.sq: dict = {}
        self.abs: dict = {}

    def add(self, traces: Traces) -> None:
        for k, t in traces.items():
            t = t.double()
            if k not in self.sum:
                self.sum[k], self.sq[k], self.abs[k] = t.clone(), t * t, t.abs()
            else:
                self.sum[k] += t
                self.sq[k] += t * t
                self.abs[k] += t.abs()
        self.n += 1

    def score(self) -> float:
        """Σ over modules of log Σ_{coords with std > 0} mean|g| / std(g) (population std, as ZiCo)."""
        if self.n < 2:
            return float("nan")
        total = 0.0
        for k in sorted(self.sum):
            mean = self.sum[k] / self.n
            var = (self.sq[k] / self.n - mean * mean).clamp_min(0)
            std = var.sqrt()
            # relative threshold: coordinates that are zero in every sample have var ~ rounding noise
            nz = std > 1e-12 * (self.abs[k] / self.n).max().clamp_min(1e-300)
            if not bool(nz.any()):
                continue
            ratio = float(((self.abs[k] / self.n)[nz] / std[nz]).sum())
            if ratio > 0:
                total += math.log(ratio)
        return total


def zico_samples(probes: TraceProbes, batches: torch.Tensor, genome: Genome, micro_batch: int = 1,
                 loss_chunk: int = 1024) -> tuple[ZicoAccumulator, Traces, float]:
    """Traces of the kept blocks per micro-batch (the ZiCo samples; sequences at micro_batch 1).

    Returns (accumulator, the size-weighted mean of the samples = the usual trace, mean loss).
    """
    active = {i for i, k in enumerate(genome.keep) if k}
    acc = ZicoAccumulator()
    total: Traces = {}
    loss_sum = 0.0
    n = batches.shape[0]
    for s in range(0, n, micro_batch):
        ids = batches[s:s + micro_batch]
        tr, loss = probes.trace(ids, micro_batch, loss_chunk, active)
        acc.add(tr)
        w = ids.shape[0] / n
        for k, t in tr.items():
            total[k] = total[k] + w * t if k in total else w * t
        loss_sum += loss * w
    return acc, total, loss_sum


# --------------------------------------------------------------------------- registered proxies


def _selection(scorer, genome: Genome) -> list[LayerSelection] | None:
    if scorer is None or getattr(scorer, "importance", None) is None:
        return None
    return select(scorer.space, genome, scorer.importance)


def naswot_proxy(model, adapter, batches, genome, scorer) -> float:
    return forward_stats(model, adapter, batches, genome, _selection(scorer, genome), want=("naswot",),
                         micro_batch=getattr(scorer, "micro_batch", 1))["naswot"]


def ppl_proxy(model, adapter, batches, genome, scorer) -> float:
    return -forward_stats(model, adapter, batches, genome, want=("nll",),
                          micro_batch=getattr(scorer, "micro_batch", 1))["nll"]


def kl_proxy(model, adapter, batches, genome, scorer) -> float:
    ref = get_reference(model, batches)
    return -forward_stats(model, adapter, batches, genome, reference=ref, want=("kl",),
                          micro_batch=getattr(scorer, "micro_batch", 1))["kl"]


class _SeeThroughSkips:
    """Adapter view whose `layers()` sees through `SkipLayer`, so probes can be built while masked."""

    def __init__(self, adapter: ModelAdapter) -> None:
        self._adapter = adapter

    def __getattr__(self, name):
        return getattr(self._adapter, name)

    def layers(self) -> list[nn.Module]:
        return [layer.inner[0] if isinstance(layer, SkipLayer) else layer for layer in self._adapter.layers()]


def zico_proxy(model, adapter, batches, genome, scorer) -> float:
    """ZiCo on LoRA-B traces; uses the scorer's probes, or temporary rank-64 probes (seed 0)."""
    if batches.shape[0] < 2:
        log.warning("zico needs at least two calibration sequences (it is a statistic across samples)")
        return float("nan")
    own = scorer is None or scorer.probes is None
    probes = TraceProbes(model, _SeeThroughSkips(adapter), rank=64, seed=0) if own else scorer.probes
    shape = adapter.shape() if scorer is None else scorer.space.shape
    selection = _selection(scorer, genome)
    probes.set_selection(selection, shape.head_dim, shape.num_heads)
    try:
        acc, _, _ = zico_samples(probes, batches, genome, 1, getattr(scorer, "loss_chunk", 1024))
    finally:
        probes.set_selection(None, shape.head_dim, shape.num_heads)
        if own:
            probes.remove()
    return acc.score()


def prepare_kl(scorer) -> None:
    """Run once, unmasked, before a Scorer scores with `kl` (its `prepare` hook)."""
    prepare_reference(scorer.model, scorer.adapter, scorer.batches, scorer.micro_batch)


class ForwardProxy(FunctionProxy):
    """A statistic of one forward pass (`forward_stats`): alone through `fn`, or read from a shared pass.

    The pass reads only the model's outputs (and, for naswot, the gate outputs of the kept channels), so it
    runs on the sliced candidate as well as under masks.
    """

    supports_sliced = True

    def __init__(self, fn, stat: str, negate: bool, prepare=None) -> None:
        super().__init__(fn, prepare)
        self.stat, self.negate = stat, negate

    def from_stats(self, stats: dict[str, float]) -> float:
        return -stats[self.stat] if self.negate else stats[self.stat]


class ZicoProxy(FunctionProxy):
    """ZiCo: alone through `zico_proxy` (its own per-sequence passes), or from a shared trace pass's samples."""

    def from_traces(self, trace_pass: TracePass, genome: Genome) -> TraceScore:
        return TraceScore(trace_pass.samples.score())


# The registry's entries "tracenas.proxies.zero_cost:NASWOT", ... (descriptions: tracenas.proxies.registry).
NASWOT = ForwardProxy(naswot_proxy, "naswot", negate=False)
ZICO = ZicoProxy(zico_proxy)
PPL = ForwardProxy(ppl_proxy, "nll", negate=True)
KL = ForwardProxy(kl_proxy, "kl", negate=True, prepare=prepare_kl)


__all__ = ["KL", "NASWOT", "PPL", "ZERO_COST_PROXIES", "ZICO", "ForwardProxy", "ForwardReference", "ZicoAccumulator",
           "ZicoProxy", "forward_stats", "get_reference", "naswot_logdet", "prepare_reference", "zico_samples"]
