"""`RecoverConfig`: every knob of `tracenas recover`, its `quick` and `paper` presets and the batch
arithmetic; `RecoverResult`, what a run did (OUT/recover.json)."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

from tracenas.runtime.config import opt, parse_count, to_dict
from tracenas.runtime.errors import TracenasError

log = logging.getLogger("tracenas.recover")  # one logger for the package: log lines name it as before the split

SCHEDULES = ("wsd", "cosine", "constant")
DTYPES = ("auto", "float32", "bfloat16", "float16")
# Values a preset fills in for every field left at None. `paper` is Table 5 of the paper (20B tokens,
# global batch 1024 x 4096, peak LR 1e-4, WSD); `quick` is sized for a CPU and the embedded corpus.
PRESETS: dict[str, dict[str, Any]] = {
    "quick": {"tokens": 100_000, "seq_len": 256, "micro_batch": 4, "global_batch": 4, "lr": 3e-4,
              "gradient_checkpointing": False, "save_every": 50},
    "paper": {"tokens": 20_000_000_000, "seq_len": 4096, "micro_batch": 4, "global_batch": 1024, "lr": 1e-4,
              "gradient_checkpointing": True, "save_every": 500},
}
# Fields that change the training trajectory: a checkpoint only resumes under the same values.


@dataclass
class RecoverConfig:
    """Continued pretraining. Fields left at None are filled from the preset."""

    model: str | None = opt(None, "model to recover: a tracenas-exported or HF directory, a .gguf file, a Hub id, "
                                  "or nothing for the default model")
    data: str | None = opt(None, "training text (default: the embedded Wikipedia corpus; its 'train' split is used)")
    preset: str = opt("quick", "quick: CPU-sized (256-token windows, 100k tokens, lr 3e-4); paper: Table 5 "
                               "(4096 tokens x 1024 sequences per step, 20B tokens, lr 1e-4)",
                      choices=tuple(PRESETS))
    tokens: int | str | None = opt(None, "training token budget, e.g. 200k, 2B (steps = tokens / (global_batch*seq_len))")
    seq_len: int | None = opt(None, "tokens per training sequence")
    micro_batch: int | None = opt(None, "sequences per forward/backward pass on each process")
    global_batch: int | None = opt(None, "sequences per optimizer step over all processes and accumulation steps")
    grad_accum: int | None = opt(None, "micro-batches accumulated per optimizer step (default: derived from "
                                       "global_batch / (micro_batch * processes))")
    lr: float | None = opt(None, "peak learning rate")
    schedule: str = opt("wsd", "learning-rate schedule: wsd (warmup-stable-decay), cosine, constant", choices=SCHEDULES)
    warmup_frac: float = opt(0.05, "fraction of the steps spent warming up linearly from 0")
    stable_frac: float = opt(0.65, "wsd: fraction of the steps at the peak learning rate")
    decay_frac: float = opt(0.30, "wsd: fraction of the steps decaying linearly to min_lr_ratio * lr")
    min_lr_ratio: float = opt(0.0, "final learning rate as a fraction of the peak (wsd and cosine)")
    weight_decay: float = opt(0.1, "AdamW weight decay (not applied to norms and biases)")
    max_grad_norm: float = opt(1.0, "clip the global gradient norm to this (0 = no clipping)")
    seed: int = opt(0, "seed for the data order and the RNG states")
    dtype: str = opt("auto", "compute dtype: auto = bf16 autocast on GPU, float32 on CPU; the master weights "
                             "and optimizer state are always float32", choices=DTYPES)
    save_dtype: str = opt("auto", "dtype of the saved model: auto = that of the input checkpoint", choices=DTYPES)
    gradient_checkpointing: bool | None = opt(None, "recompute activations in backward to save memory")
    loss_chunk: int = opt(2048, "positions per chunk of the output layer + loss, so that the full "
                                "[batch, seq, vocab] logits are never held at once")
    distill: bool = opt(False, "add a KL distillation loss towards --teacher's next-token distribution")
    teacher: str | None = opt(None, "teacher for --distill, usually the unpruned base model (same tokenizer)")
    distill_alpha: float = opt(0.5, "loss = (1 - alpha) * LM loss + alpha * T^2 * KL(teacher || student)")
    distill_temperature: float = opt(1.0, "softmax temperature T of the distillation loss")
    save_every: int | None = opt(None, "write a checkpoint every N optimizer steps (0 = only at the end)")
    keep_checkpoints: int = opt(2, "how many of the newest checkpoints to keep")
    keep_final_checkpoints: bool = opt(False, "keep checkpoints/ once the recovered model is saved (deleted then by "
                                              "default: they only serve --resume, and each holds the weights and "
                                              "the AdamW state, about 3x the float32 model)")
    stop_after_steps: int | None = opt(None, "stop (with a checkpoint) once this many steps are done; the schedule "
                                             "still spans the whole budget, so --resume continues it")
    out: str = opt("runs/recover", "output directory (model/, checkpoints/, train_log.jsonl, loss.png, ...)")
    threads: int | None = opt(None, "CPU threads for torch (default: torch's choice, one per core)")
    resume: bool = opt(False, "continue from the newest checkpoint in --out")

    def __post_init__(self) -> None:
        self.tokens = parse_count(self.tokens, "a token count")
        if self.preset not in PRESETS:
            raise TracenasError(f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        for name, choices in (("schedule", SCHEDULES), ("dtype", DTYPES), ("save_dtype", DTYPES)):
            if getattr(self, name) not in choices:
                raise TracenasError(f"--{name.replace('_', '-')} must be one of {', '.join(choices)}")
        for name in ("tokens", "seq_len", "micro_batch", "global_batch", "grad_accum", "loss_chunk",
                     "keep_checkpoints", "stop_after_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise TracenasError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if self.seq_len is not None and self.seq_len < 2:
            raise TracenasError("--seq-len must be >= 2 (next-token loss needs two tokens)")
        if self.lr is not None and not self.lr > 0:
            raise TracenasError(f"--lr must be > 0, got {self.lr}")
        fracs = (self.warmup_frac, self.stable_frac, self.decay_frac)
        if any(f < 0 for f in fracs) or self.warmup_frac > 1:
            raise TracenasError("schedule fractions must be non-negative and at most 1")
        if self.schedule == "wsd" and abs(sum(fracs) - 1) > 1e-6:
            raise TracenasError(f"WSD fractions warmup/stable/decay must sum to 1, got {'/'.join(map(str, fracs))}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise TracenasError("--min-lr-ratio must be in [0, 1]")
        if not 0 <= self.distill_alpha <= 1 or self.distill_temperature <= 0:
            raise TracenasError("--distill-alpha must be in [0, 1] and --distill-temperature > 0")
        if self.save_every is not None and self.save_every < 0:
            raise TracenasError("--save-every must be >= 0")

    def resolved(self, world_size: int = 1) -> RecoverConfig:
        """A copy with every preset field filled in and the batch arithmetic settled."""
        values = {k: v for k, v in to_dict(self).items()}
        for key, value in PRESETS[self.preset].items():
            if values.get(key) is None:
                values[key] = value
        per_pass = values["micro_batch"] * world_size
        if self.grad_accum is not None and self.global_batch is None:
            values["global_batch"] = per_pass * self.grad_accum  # the user chose accumulation, not a batch
        if values["grad_accum"] is None:
            accum = max(1, round(values["global_batch"] / per_pass))
            if accum * per_pass != values["global_batch"]:
                log.warning("global batch %d is not a multiple of micro_batch %d x %d processes: using %d",
                            values["global_batch"], values["micro_batch"], world_size, accum * per_pass)
            values["grad_accum"] = accum
            values["global_batch"] = accum * per_pass
        elif values["grad_accum"] * per_pass != values["global_batch"]:
            raise TracenasError(f"--global-batch {values['global_batch']} != micro_batch {values['micro_batch']} x "
                                f"grad_accum {values['grad_accum']} x {world_size} processes")
        return RecoverConfig(**values)


@dataclass
class RecoverResult:
    """What a recovery run did; also written to OUT/recover.json."""

    final_loss: float | None  # mean training loss over the last (up to) 10 steps
    last_loss: float | None
    steps: int
    total_steps: int
    tokens_seen: int
    wall_time_s: float  # training time summed over all invocations (resumes included)
    tokens_per_s: float  # throughput of this invocation
    path: str | None  # the recovered model directory; None while stopped early
    out: str
    completed: bool
    resumed_from: int | None = None
    compute_dtype: str = "float32"  # what --dtype resolved to: the autocast dtype, or float32 without autocast
    teacher: str | None = None  # the model distilled from (--distill), else None: plain next-token loss

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
