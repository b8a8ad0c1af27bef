"""`EvalConfig`: every knob of `tracenas eval` and its `quick` and `paper` presets (see `tracenas.eval.evaluate`).

Kept apart from `tracenas.eval.evaluate`, and free of torch at import, so that `tracenas eval --help` does not
load torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tracenas.runtime.config import opt, to_dict
from tracenas.runtime.errors import TracenasError

PRESETS: dict[str, dict[str, Any]] = {
    "quick": {"ppl_seq_len": 512, "ppl_max_tokens": 32_768, "tasks": ""},
    "paper": {"ppl_seq_len": 4096, "ppl_max_tokens": 0, "tasks": "paper"},
}


@dataclass
class EvalConfig:
    """Perplexity on held-out text and lm-evaluation-harness tasks. None fields come from the preset."""

    model: str | None = opt(None, "model: a tracenas-exported or HF directory, a .gguf file, a Hub id, or nothing "
                                  "for the default model")
    data: str | None = opt(None, "text for perplexity (default: the embedded Wikipedia corpus; its 'eval' split)")
    ppl_split: str = opt("eval", "which documents of --data perplexity reads: its eval split (never used for "
                                 "calibration or training), or all of them (a text used for nothing else, e.g. an "
                                 "out-of-domain check)", choices=("eval", "all"))
    preset: str = opt("quick", "quick: 512-token windows over 32k tokens, no tasks; paper: 4096-token windows over "
                               "the whole split and the paper's task suite", choices=tuple(PRESETS))
    ppl: bool = opt(True, "compute perplexity")
    ppl_seq_len: int | None = opt(None, "perplexity window length in tokens (clipped to the model's context)")
    ppl_max_tokens: int | None = opt(None, "at most this many eval tokens for perplexity (0 = the whole split)")
    micro_batch: int = opt(4, "windows per forward pass for perplexity")
    tasks: str | None = opt(None, "comma-separated: lm-eval task names, 'paper' (the paper's suite), "
                                  "local:FILE.jsonl (multiple choice, offline); empty for none")
    num_fewshot: int | None = opt(None, "few-shot examples for every task (default: the paper's count for its "
                                        "tasks, else the task's own default)")
    limit: float | None = opt(None, "evaluate only this many examples per task (or a fraction if < 1); for quick checks")
    batch_size: int = opt(8, "lm-eval batch size")
    bootstrap_iters: int = opt(1000, "lm-eval bootstrap iterations for the stderr of non-mean metrics")
    device: str = opt("auto", "device: auto (cuda if available), cpu, cuda, cuda:1, ...")
    dtype: str = opt("auto", "weights dtype: auto (bfloat16 on GPU, float32 on CPU), float32, bfloat16, float16",
                     choices=("auto", "float32", "bfloat16", "float16"))
    seed: int = opt(0, "seed for lm-eval's sampling of few-shot examples")
    offline: bool | None = opt(None, "never touch the network (default: detect; TRACENAS_OFFLINE=1 also forces it)")
    out: str | None = opt(None, "directory for results.json (nothing is written without it)")
    threads: int | None = opt(None, "CPU threads for torch (default: torch's choice, one per core)")

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise TracenasError(f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        for name in ("ppl_seq_len", "micro_batch", "batch_size"):
            value = getattr(self, name)
            if value is not None and value < (2 if name == "ppl_seq_len" else 1):
                raise TracenasError(f"--{name.replace('_', '-')} must be >= {2 if name == 'ppl_seq_len' else 1}")
        if self.ppl_max_tokens is not None and self.ppl_max_tokens < 0:
            raise TracenasError("--ppl-max-tokens must be >= 0 (0 = the whole split)")
        if self.ppl_split == "all" and self.data is None:
            raise TracenasError("--ppl-split all reads every document of --data: the default corpus also holds the "
                                "calibration and training text, so give --data (e.g. an out-of-domain .txt)")
        if self.limit is not None and not self.limit > 0:
            raise TracenasError("--limit must be > 0")
        if self.num_fewshot is not None and self.num_fewshot < 0:
            raise TracenasError("--num-fewshot must be >= 0")

    def resolved(self) -> EvalConfig:
        values = to_dict(self)
        for key, value in PRESETS[self.preset].items():
            if values.get(key) is None:
                values[key] = value
        return EvalConfig(**values)


__all__ = ["PRESETS", "EvalConfig"]
