"""`ValidateConfig`: every knob of `tracenas validate-proxy`, its `quick` and `paper` presets, the Φ variants
of the study, and `ValidationResult`. The proxies themselves come from `tracenas.proxies.registry`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tracenas.runtime.config import opt
from tracenas.runtime.errors import TracenasError
from tracenas.proxies.registry import UnknownProxyError, get_proxy, proxy_names

FAMILIES = ("width", "depth", "mixed")
# Validation-only analyses of the main trace pass (scoring.variant_scores), not search proxies: name -> label.
VARIANTS = {"phi_active": "Φ, pruned coords excluded", "phi_global": "Φ, one Pearson (kept blocks)",
            "phi_all": "Φ, one Pearson (all blocks)", "cosine_all": "cosine (all blocks)"}

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
_RESUMABLE = ("num_candidates", "seeds", "proxies", "variants", "sweep", "device", "report_only", "threads")


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
    threads: int | None = opt(None, "CPU threads for torch (default: torch's choice, one per core)")
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
                                        "autocast (fp32 master weights)",
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
        self.proxy_list()

    def proxy_list(self) -> list[str]:
        """The proxies to score (registry order for 'all'), checked against the registry as it is now."""
        avail = list(proxy_names())
        if self.proxies.strip() == "all":
            names = avail
        else:
            names = [n.strip() for n in self.proxies.split(",") if n.strip()]
            bad = [n for n in names if n not in avail and n not in VARIANTS]
            if bad:
                raise TracenasError(f"unknown proxies {', '.join(bad)}; available: "
                                    f"{', '.join(avail + list(VARIANTS))}")
        if self.variants:
            names += [v for v in VARIANTS if v not in names]
        return names

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


def proxy_label(name: str) -> str:
    """The name of a proxy or Φ variant in tables and plots."""
    if name in VARIANTS:
        return VARIANTS[name]
    try:
        return get_proxy(name).title
    except UnknownProxyError:  # a proxy of an earlier run that is not registered now
        return name


@dataclass
class ValidationResult:
    out: Path
    summary: dict
    candidates: int
    seconds: float
