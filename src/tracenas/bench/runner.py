"""Inference benchmark of a pruned checkpoint against its base model (the paper's Table 8).

    tracenas bench runs/demo                       # runs/demo/model vs the base model in arch.json
    tracenas bench path/to/pruned --base HuggingFaceTB/SmolLM2-135M --trials 20

    from tracenas.bench.runner import BenchConfig, run_bench
    result = run_bench("runs/demo", BenchConfig(device="cpu"))

Per model, `trials` greedy `generate()` calls (after `warmup` untimed ones) on the same random-token
prompt of `prompt_len` tokens (fixed seed), each forced to `gen_len` new tokens (`min_new_tokens ==
max_new_tokens`, KV cache on). A logits processor timestamps every decoding step, so one call yields:
- TTFT: time to first token (prefill), from the call to the first step;
- TPOT: time per output token, (last step - first step) / (gen_len - 1);
- throughput: batch * gen_len / end-to-end time of the call (tokens/s);
- peak memory. GPU: `torch.cuda.max_memory_allocated` during the call (weights included). CPU: the
  process's peak resident set during the call, measured on Linux by resetting the kernel's high-water
  mark (`/proc/self/clear_refs` <- 5) before the call and reading `VmHWM` after it; reported as the
  weights' bytes plus the growth above the resident size before the call (None where /proc is absent).
Base and pruned are both loaded and timed interleaved (one trial of each per round, alternating which goes
first), so load that changes during the bench hits both alike. Medians and quartiles over the trials are
reported, plus prefill / decode / throughput speedups of pruned over base, each with the range of its paired
(same-round) ratios; a speedup whose paired ratios straddle 1 or spread over more than a factor of 2 is marked
unsupported and never printed as a figure.
Defaults follow the paper on GPU (prompt 4096, 128 new tokens, 20 trials, bf16) and are CPU-sized on CPU
(prompt 256, 32 new tokens, 5 trials, float32).
"""

from __future__ import annotations

import gc
import logging
import re
import statistics
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tracenas.bench.config import BenchConfig
from tracenas.bench.report import SPEEDUP_METRICS, format_speedup
from tracenas.runtime.config import atomic_write_json
from tracenas.runtime.logs import run_log
from tracenas.runtime.errors import RunDirError, TracenasError

log = logging.getLogger(__name__)

# --- memory ------------------------------------------------------------------------------------------------
_PROC_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _proc_kib(field: str) -> int | None:
    try:
        m = re.search(rf"^{field}:\s+(\d+) kB", _PROC_STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(m.group(1)) if m else None


class PeakMemory:
    """Peak memory of a region: CUDA max allocated, or on Linux the RSS high-water mark growth."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"
        self.method = "cuda_max_memory_allocated" if self.cuda else "weights+rss_hwm_delta"
        self.before: int | None = None
        self.peak_extra: int | None = None

    def __enter__(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.before = torch.cuda.memory_allocated(self.device)
        else:
            try:
                _CLEAR_REFS.write_text("5")  # resets VmHWM to the current RSS
                self.before = _proc_kib("VmRSS")
            except OSError:
                self.before = None

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            self.peak_extra = torch.cuda.max_memory_allocated(self.device) - self.before
        elif self.before is not None:
            hwm = _proc_kib("VmHWM")
            self.peak_extra = None if hwm is None else max(0, hwm - self.before) * 1024


# --- timing ------------------------------------------------------------------------------------------------
def _step_clock(sync):
    """A logits processor that timestamps every decoding step (after the step's forward pass)."""
    from transformers import LogitsProcessor

    class StepClock(LogitsProcessor):
        def __init__(self):
            self.times: list[float] = []

        def __call__(self, input_ids, scores):
            sync()
            self.times.append(time.perf_counter())
            return scores

    return StepClock()


def _param_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def random_prompt(vocab_size: int, batch_size: int, prompt_len: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch_size, prompt_len), generator=g)


class _Timer:
    """Timed forced-length greedy generations of one model on one prompt, one trial per call."""

    def __init__(self, model: nn.Module, prompt: torch.Tensor, gen_len: int):
        from transformers import GenerationConfig

        self.model, self.gen_len = model, gen_len
        self.device = next(model.parameters()).device
        self.prompt = prompt.to(self.device)
        self.mask = torch.ones_like(self.prompt)
        self.sync = (lambda: torch.cuda.synchronize(self.device)) if self.device.type == "cuda" else (lambda: None)
        eos = getattr(model.generation_config, "eos_token_id", None) if model.generation_config else None
        self.gen = GenerationConfig(max_new_tokens=gen_len, min_new_tokens=gen_len, do_sample=False, use_cache=True,
                                    num_beams=1, eos_token_id=eos, pad_token_id=0)
        self.ttft: list[float] = []
        self.tpot: list[float] = []
        self.total: list[float] = []
        self.peaks: list[int | None] = []
        self.method: str | None = None

    @torch.no_grad()
    def trial(self, record: bool = True) -> None:
        from transformers import LogitsProcessorList

        clock = _step_clock(self.sync)
        mem = PeakMemory(self.device)
        with mem:
            self.sync()
            start = time.perf_counter()
            out = self.model.generate(input_ids=self.prompt, attention_mask=self.mask, generation_config=self.gen,
                                      logits_processor=LogitsProcessorList([clock]))
            self.sync()
            end = time.perf_counter()
        new = out.shape[1] - self.prompt.shape[1]
        if new != self.gen_len or len(clock.times) != self.gen_len:
            raise TracenasError(f"generate() produced {new} tokens instead of {self.gen_len}")
        if record:
            self.ttft.append(clock.times[0] - start)
            self.tpot.append((clock.times[-1] - clock.times[0]) / (self.gen_len - 1))
            self.total.append(end - start)
            self.peaks.append(mem.peak_extra)
            self.method = mem.method

    def result(self) -> dict[str, Any]:
        weights = _param_bytes(self.model)
        extra = None if any(p is None for p in self.peaks) else statistics.median(self.peaks)
        batch = self.prompt.shape[0]
        cuda = self.device.type == "cuda"
        trials = {"ttft_ms": [1e3 * t for t in self.ttft], "tpot_ms": [1e3 * t for t in self.tpot],
                  "total_ms": [1e3 * t for t in self.total]}
        return {
            "params": sum(p.numel() for p in self.model.parameters()),
            "ttft_ms": 1e3 * statistics.median(self.ttft),
            "tpot_ms": 1e3 * statistics.median(self.tpot),
            "throughput_tok_s": batch * self.gen_len / statistics.median(self.total),
            "total_ms": 1e3 * statistics.median(self.total),
            "weights_mb": weights / 2**20,
            "peak_mem_mb": None if extra is None else (extra if cuda else weights + extra) / 2**20,
            "peak_extra_mem_mb": None if extra is None else extra / 2**20,
            "peak_mem_method": self.method,
            "spread": {k: _quartiles(v) for k, v in trials.items()},
            "trials": trials,
        }


def _quartiles(values: list[float]) -> list[float]:
    """[first quartile, third quartile] (both the value itself for one trial)."""
    if len(values) < 2:
        return [values[0], values[0]] if values else []
    q = statistics.quantiles(values, n=4, method="inclusive")
    return [q[0], q[2]]


def measure(model: nn.Module, prompt: torch.Tensor, *, gen_len: int, trials: int, warmup: int) -> dict[str, Any]:
    """Time `trials` forced-length greedy generations of `prompt` on the model's device."""
    return measure_interleaved({"model": model}, prompt, gen_len=gen_len, trials=trials, warmup=warmup)["model"]


def measure_interleaved(models: dict[str, nn.Module], prompt: torch.Tensor, *, gen_len: int, trials: int,
                        warmup: int) -> dict[str, dict[str, Any]]:
    """Time the models' trials interleaved, one trial of each per round (order alternating: A B, B A, ...), so a
    change of load on a shared machine hits both sides alike instead of turning into a fake speedup."""
    timers = {name: _Timer(m, prompt, gen_len) for name, m in models.items()}
    for timer in timers.values():
        for _ in range(warmup):
            timer.trial(record=False)
    names = list(timers)
    for i in range(trials):
        for name in (names if i % 2 == 0 else names[::-1]):
            timers[name].trial()
    return {name: t.result() for name, t in timers.items()}


MAX_RATIO_SPREAD = 2.0  # paired ratios further apart than this factor support no speedup


def speedup(base: dict[str, Any], pruned: dict[str, Any]) -> dict[str, Any]:
    """Pruned over base: the ratio of medians per metric, the ratios of the paired (same-round) trials, and
    whether the trials support the figure: every paired ratio on the same side of 1 and within a factor of
    `MAX_RATIO_SPREAD` of each other (else the machine's load moved more than the models differ)."""
    out: dict[str, Any] = {
        "prefill": base["ttft_ms"] / pruned["ttft_ms"], "decode": base["tpot_ms"] / pruned["tpot_ms"],
        "throughput": pruned["throughput_tok_s"] / base["throughput_tok_s"], "params": pruned["params"] / base["params"]}
    if base["peak_mem_mb"] and pruned["peak_mem_mb"]:
        out["memory"] = pruned["peak_mem_mb"] / base["peak_mem_mb"]
    paired, supported = {}, {}
    for name, key in SPEEDUP_METRICS.items():
        ratios = [b / p for b, p in zip(base["trials"][key], pruned["trials"][key]) if p > 0]
        paired[name] = [min(ratios), statistics.median(ratios), max(ratios)] if ratios else []
        supported[name] = bool(ratios) and (min(ratios) > 1 or max(ratios) < 1) and \
            max(ratios) / min(ratios) <= MAX_RATIO_SPREAD
    out["paired"], out["supported"] = paired, supported
    return out


# --- run directories ---------------------------------------------------------------------------------------
def resolve_paths(model_dir: str | Path, base: str | None) -> tuple[Path, str | None, Path]:
    """`(pruned model dir, base spec or None, default bench.json path)` for a run or model directory.

    The default report path is RUN_DIR/bench.json, or MODEL_DIR.bench.json next to a model directory that is
    not inside a run directory."""
    from tracenas.arch import ArchFile

    path = Path(model_dir)
    if not path.exists():
        raise RunDirError(f"no such model or run directory: {path}")
    if (path / "arch.json").is_file() and not (path / "config.json").is_file():
        run_dir, model = path, path / "model"
        if not (model / "config.json").is_file():
            raise RunDirError(f"{run_dir} has no exported model; run `tracenas export {run_dir}` first")
    elif (path / "config.json").is_file():
        model = path
        run_dir = path.parent if (path.parent / "arch.json").is_file() else None
    else:
        raise RunDirError(f"{path} is neither a run directory (arch.json) nor a model directory (config.json)")
    if base is None and run_dir is not None:
        base = ArchFile.read(run_dir).source_spec()
    # Never into the checkpoint itself (it is what users ship); beside it when there is no run directory.
    default_out = run_dir / "bench.json" if run_dir is not None else model.parent / f"{model.name}.bench.json"
    return model, base, default_out


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def is_done(run_dir: str | Path, cfg: BenchConfig | None = None) -> bool:
    """Whether `run_dir` holds its benchmark report (RUN_DIR/bench.json, or `cfg.out`)."""
    return (Path(cfg.out) if cfg is not None and cfg.out else Path(run_dir) / "bench.json").is_file()


def run_bench(model_dir: str | Path, cfg: BenchConfig | None = None) -> dict[str, Any]:
    """Benchmark the pruned checkpoint (and its base, when known); write and return bench.json's content."""
    cfg = (cfg or BenchConfig()).resolved()
    model_path, base_spec, default_out = resolve_paths(model_dir, cfg.base)
    from tracenas.runtime.device import using_threads

    with using_threads(cfg.threads):
        return _run(cfg, model_path, base_spec, default_out)


def _run(cfg: BenchConfig, model_path: Path, base_spec: str | None, default_out: Path) -> dict[str, Any]:
    from tracenas.runtime.device import to_torch_dtype

    device = torch.device(cfg.device)
    dtype = to_torch_dtype(cfg.dtype)
    out = Path(cfg.out) if cfg.out else default_out
    if out.suffix != ".json":
        out = out / "bench.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    with run_log(out.parent, out.stem):  # bench.log beside bench.json
        return _measure_all(cfg, model_path, base_spec, out, device, dtype)


def _measure_all(cfg: BenchConfig, model_path: Path, base_spec: str | None, out: Path, device: torch.device,
                 dtype: torch.dtype) -> dict[str, Any]:
    import transformers

    from tracenas.models.loading import load_model
    from tracenas.models.pruned import load_pruned

    runs = [("base", base_spec)] if base_spec else []
    runs.append(("pruned", str(model_path)))
    models: dict[str, nn.Module] = {}
    for name, spec in runs:  # both loaded, so that their trials can interleave
        log.info("loading %s model %s on %s (%s)", name, spec, device, cfg.dtype)
        if name == "base":
            models[name], _, _ = load_model(spec, dtype=dtype, device=device,
                                            attn_implementation=cfg.attn_implementation, with_tokenizer=False)
        else:
            models[name] = load_pruned(spec, dtype=dtype, device=device, attn_implementation=cfg.attn_implementation)
        limit = getattr(models[name].config, "max_position_embeddings", None)
        if limit and cfg.prompt_len + cfg.gen_len > limit:
            log.warning("prompt + generation (%d) exceeds max_position_embeddings (%d) of %s",
                        cfg.prompt_len + cfg.gen_len, limit, spec)
    vocab = models[runs[0][0]].get_input_embeddings().weight.shape[0]
    prompt = random_prompt(vocab, cfg.batch_size, cfg.prompt_len, cfg.seed)
    log.info("timing %s, %d trials each, interleaved", " and ".join(models), cfg.trials)
    measured = measure_interleaved(models, prompt, gen_len=cfg.gen_len, trials=cfg.trials, warmup=cfg.warmup)
    results = {name: {"model": spec, **measured[name]} for name, spec in runs}
    del models
    _free(device)
    ratios = speedup(results["base"], results["pruned"]) if "base" in results else None
    if ratios and not all(ratios["supported"].values()):
        log.warning("the trials do not support every speedup (load changed during the bench?): %s",
                    format_speedup(ratios))
    report = {
        "device": _device_name(device),
        "config": asdict(cfg),
        "models": results,
        "speedup": ratios,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write_json(out, report)
    report["path"] = str(out)
    log.info("wrote %s", out)
    return report


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


__all__ = ["BenchConfig", "PeakMemory", "format_speedup", "measure", "measure_interleaved", "random_prompt",
           "resolve_paths", "run_bench", "speedup"]
