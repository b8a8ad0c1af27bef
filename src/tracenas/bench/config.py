"""`BenchConfig`: every knob of `tracenas bench` (see `tracenas.bench.runner` for what is measured and how).

Kept apart from `tracenas.bench.runner`, and free of torch at import, so that `tracenas bench --help` does not
load torch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from tracenas.runtime.config import opt
from tracenas.runtime.errors import TracenasError

GPU_DEFAULTS = {"prompt_len": 4096, "gen_len": 128, "trials": 20, "warmup": 3, "dtype": "bfloat16"}
CPU_DEFAULTS = {"prompt_len": 256, "gen_len": 32, "trials": 5, "warmup": 1, "dtype": "float32"}


@dataclass
class BenchConfig:
    """Settings of `tracenas bench`; None means the device's default (see the module docstring)."""

    base: str | None = opt(None, "base model to compare with (default: the one recorded in the run's arch.json)")
    out: str | None = opt(None, "where to write bench.json: a file or a directory (default: RUN_DIR/bench.json, or "
                                "MODEL_DIR.bench.json beside a model directory outside a run directory)")
    prompt_len: int | None = opt(None, "prompt tokens (default 4096 on GPU, 256 on CPU)")
    gen_len: int | None = opt(None, "new tokens per call, at least 2 (default 128 on GPU, 32 on CPU)")
    trials: int | None = opt(None, "timed calls per model; medians are reported (default 20 GPU, 5 CPU)")
    warmup: int | None = opt(None, "untimed calls first (default 3 GPU, 1 CPU)")
    batch_size: int = opt(1, "prompts per call")
    device: str = opt("auto", "cuda, cuda:N, cpu or auto (cuda when available)")
    dtype: str = opt("auto", "float32, bfloat16, float16 or auto (bfloat16 on GPU, float32 on CPU)",
                     choices=["auto", "float32", "bfloat16", "float16"])
    attn_implementation: str = opt("sdpa", "attention kernel for both models", choices=["sdpa", "eager"])
    seed: int = opt(0, "seed of the random prompt")
    threads: int | None = opt(None, "CPU threads for torch (default: torch's choice); fix it for comparable runs")

    def __post_init__(self) -> None:
        for name in ("prompt_len", "trials"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise TracenasError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if self.gen_len is not None and self.gen_len < 2:
            raise TracenasError(f"--gen-len must be at least 2 (TPOT needs two tokens), got {self.gen_len}")
        if self.warmup is not None and self.warmup < 0:
            raise TracenasError(f"--warmup must be >= 0, got {self.warmup}")
        if self.threads is not None and self.threads < 1:
            raise TracenasError(f"--threads must be at least 1, got {self.threads}")
        if self.batch_size < 1:
            raise TracenasError(f"--batch-size must be at least 1, got {self.batch_size}")

    def resolved(self) -> BenchConfig:
        """A copy with the device and every None replaced by the device's default."""
        # here, not at the top: the CLI builds its parser from this module without torch
        from tracenas.runtime.device import resolve_device

        device = str(resolve_device(self.device))
        defaults = GPU_DEFAULTS if device.startswith("cuda") else CPU_DEFAULTS
        values = {k: (defaults[k] if getattr(self, k) is None else getattr(self, k))
                  for k in ("prompt_len", "gen_len", "trials", "warmup")}
        dtype = defaults["dtype"] if self.dtype == "auto" else self.dtype
        return replace(self, device=device, dtype=dtype, **values)


__all__ = ["CPU_DEFAULTS", "GPU_DEFAULTS", "BenchConfig"]
