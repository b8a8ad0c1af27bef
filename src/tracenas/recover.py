"""Recovery: continued pretraining (CPT) of a pruned (or dense) causal LM on the training split.

    tracenas recover runs/demo/model --preset quick --out runs/demo/recovered
    tracenas recover runs/demo/model --out runs/demo/recovered --resume          # after a kill
    accelerate launch -m tracenas recover runs/demo/model --preset paper --tokens 2B --out ...
    torchrun --nproc_per_node 8 -m tracenas recover runs/demo/model --preset paper --out ...

The loop is plain PyTorch driven by `accelerate`, so the same code runs single-process on CPU and
with DDP (or FSDP, through an accelerate config) on many GPUs. Data is the training split of `--data`
cut into non-overlapping `seq_len` windows whose order is a seeded permutation per epoch; optimizer
step `i` always consumes global windows `[i*B, (i+1)*B)`, so a resumed run sees exactly the batches an
uninterrupted run would. Checkpoints (`OUT/checkpoints/step-N/`) hold the weights, the AdamW state and
the RNG states as safetensors plus a JSON header; with the same config a resumed run ends with
bit-identical weights on CPU. See docs/recovery.md for the presets and the outputs.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from tracenas.config import atomic_write_json, opt, save_config, to_dict
from tracenas.errors import DataError, TracenasError

log = logging.getLogger(__name__)

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
_TRAJECTORY = ("data", "tokens", "seq_len", "micro_batch", "global_batch", "grad_accum", "lr", "schedule",
               "warmup_frac", "stable_frac", "decay_frac", "min_lr_ratio", "weight_decay", "max_grad_norm", "seed",
               "dtype", "distill", "distill_alpha", "distill_temperature", "teacher", "loss_chunk")
CHECKPOINTS = "checkpoints"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def parse_count(value: float | str | None) -> int | None:
    """`200000`, `2e9`, `"200k"`, `"20B"`, `"1.5M"` -> int (for --tokens)."""
    if value is None or isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value)
    text = value.strip().lower().replace("_", "").replace(",", "")
    scale = {"k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9, "t": 10**12}.get(text[-1:], 1)
    try:
        return int(float(text[:-1] if scale > 1 else text) * scale)
    except ValueError:
        raise TracenasError(f"cannot read a token count from {value!r} (examples: 200000, 200k, 2e9, 20B)") from None


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
    stop_after_steps: int | None = opt(None, "stop (with a checkpoint) once this many steps are done; the schedule "
                                             "still spans the whole budget, so --resume continues it")
    out: str = opt("runs/recover", "output directory (model/, checkpoints/, train_log.jsonl, loss.png, ...)")
    resume: bool = opt(False, "continue from the newest checkpoint in --out")

    def __post_init__(self) -> None:
        self.tokens = parse_count(self.tokens)
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

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- schedule and data


def lr_at(step: int, total: int, cfg: RecoverConfig) -> float:
    """Learning rate of optimizer step `step` (0-based) out of `total`."""
    peak, floor = cfg.lr, cfg.lr * cfg.min_lr_ratio
    warmup = round(cfg.warmup_frac * total)
    if step < warmup:
        return peak * (step + 1) / warmup
    if cfg.schedule == "constant":
        return peak
    if cfg.schedule == "cosine":
        span = max(1, total - warmup)
        return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * (step - warmup) / span))
    decay = round(cfg.decay_frac * total)
    start = total - decay
    if step < start:
        return peak
    return peak - (peak - floor) * (step - start) / max(1, decay)  # linear cool-down towards `floor`


class TrainWindows:
    """The training stream as `seq_len` windows; global window j is a fixed function of (seed, j)."""

    def __init__(self, stream: torch.Tensor, seq_len: int, seed: int) -> None:
        self.count = stream.numel() // seq_len
        self.windows = stream[: self.count * seq_len].view(self.count, seq_len)
        self.seed = seed
        self._orders: dict[int, torch.Tensor] = {}

    def _order(self, epoch: int) -> torch.Tensor:
        if epoch not in self._orders:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._orders = {epoch: torch.randperm(self.count, generator=g)}  # keep one epoch in memory
        return self._orders[epoch]

    def batch(self, start: int, size: int) -> torch.Tensor:
        """Global windows [start, start + size) as a LongTensor [size, seq_len]."""
        rows = [self._order(j // self.count)[j % self.count] for j in range(start, start + size)]
        return self.windows[torch.stack(rows)]


def _training_stream(tokenizer, cfg: RecoverConfig) -> torch.Tensor:
    from tracenas.data import load_split, token_stream

    return token_stream(tokenizer, load_split(cfg.data, "train"))


# --------------------------------------------------------------------------- loss


def _ce_sum(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, labels: torch.Tensor):
    logits = F.linear(hidden, weight, bias).float()
    return F.cross_entropy(logits, labels, reduction="sum")


def _kd_sum(hidden, weight, bias, labels, t_hidden, t_weight, t_bias, temperature: float, alpha: float):
    logits = F.linear(hidden, weight, bias).float()
    ce = F.cross_entropy(logits, labels, reduction="sum")
    with torch.no_grad():
        t_logp = F.log_softmax(F.linear(t_hidden, t_weight, t_bias).float() / temperature, dim=-1)
    kl = F.kl_div(F.log_softmax(logits / temperature, dim=-1), t_logp, log_target=True, reduction="sum")
    kl = kl * temperature**2
    return (1 - alpha) * ce + alpha * kl, ce.detach(), kl.detach()


def chunked_lm_loss(hidden: torch.Tensor, head: nn.Module, labels: torch.Tensor, chunk: int,
                    teacher: tuple[torch.Tensor, nn.Module] | None = None, alpha: float = 0.0,
                    temperature: float = 1.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean next-token loss of `hidden` [N, H] against `labels` [N], `chunk` rows of logits at a time.

    With grad enabled and more than one chunk, each chunk is checkpointed: its logits are recomputed
    in backward instead of kept, so peak memory is one chunk of logits (student and teacher), not
    [N, vocab]. `teacher = (teacher_hidden [N, H_t], teacher_head)` mixes in the distillation term.
    """
    n = hidden.shape[0]
    recompute = torch.is_grad_enabled() and n > chunk
    totals: dict[str, torch.Tensor] = {}
    loss = hidden.new_zeros((), dtype=torch.float32)
    for i in range(0, n, chunk):
        args: tuple = (hidden[i:i + chunk], head.weight, head.bias, labels[i:i + chunk])
        if teacher is None:
            fn, parts = _ce_sum, ("ce",)
        else:
            fn, parts = _kd_sum, ("loss", "ce", "kl")
            args += (teacher[0][i:i + chunk], teacher[1].weight, teacher[1].bias, temperature, alpha)
        out = checkpoint(fn, *args, use_reentrant=False) if recompute else fn(*args)
        out = out if isinstance(out, tuple) else (out,)
        loss = loss + out[0]
        for name, value in zip(parts, out):
            totals[name] = totals.get(name, 0) + value.detach()
    return loss / n, {k: v / n for k, v in totals.items()}


class _LossModel(nn.Module):
    """Wraps the student so that DDP/FSDP see one forward that returns the (chunked) loss."""

    def __init__(self, model: nn.Module, cfg: RecoverConfig, teacher: nn.Module | None = None) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.__dict__["teacher"] = teacher  # not a submodule: frozen, and DDP must neither wrap nor sync it
        self._no_split_modules = getattr(model, "_no_split_modules", None)  # for FSDP auto-wrap

    def forward(self, input_ids: torch.Tensor):
        hidden = self.model.get_decoder()(input_ids=input_ids, use_cache=False).last_hidden_state
        labels = input_ids[:, 1:].reshape(-1)
        hidden = hidden[:, :-1].reshape(-1, hidden.shape[-1])
        teacher = None
        if self.teacher is not None:
            with torch.no_grad():
                t_hidden = self.teacher.get_decoder()(input_ids=input_ids, use_cache=False).last_hidden_state
            teacher = (t_hidden[:, :-1].reshape(-1, t_hidden.shape[-1]), self.teacher.get_output_embeddings())
        return chunked_lm_loss(hidden, self.model.get_output_embeddings(), labels, self.cfg.loss_chunk,
                               teacher, self.cfg.distill_alpha, self.cfg.distill_temperature)


# --------------------------------------------------------------------------- checkpoints


def _checkpoint_dirs(out: Path) -> list[tuple[int, Path]]:
    root = out / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and
             (p / "state.json").is_file()]
    return sorted(found)


def _fingerprint(cfg: RecoverConfig, world_size: int) -> dict[str, Any]:
    values = {k: getattr(cfg, k) for k in _TRAJECTORY}
    values["world_size"] = world_size
    return json.loads(json.dumps(values))


def _is_fsdp(accelerator) -> bool:
    return accelerator.distributed_type.name == "FSDP"


def _save_checkpoint(accelerator, wrapper: nn.Module, optimizer, out: Path, step: int, meta: dict, keep: int) -> None:
    """Write OUT/checkpoints/step-N via a temporary directory renamed once complete; keep the newest `keep`.

    Single process and DDP: the (replicated) weights, AdamW state and per-rank RNG states as safetensors,
    scalars in state.json. FSDP: accelerate's sharded `save_state` (safe serialization) + state.json.
    """
    from safetensors.torch import save_file

    root = out / CHECKPOINTS
    tmp, final = root / f".tmp-step-{step}", root / f"step-{step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    model = accelerator.unwrap_model(wrapper).model
    state: dict[str, Any] = {}
    if _is_fsdp(accelerator):
        accelerator.save_state(str(tmp), safe_serialization=True)
    else:
        rng = {"torch_cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["torch_cuda"] = torch.cuda.get_rng_state()
        save_file(rng, str(tmp / f"rng_rank{accelerator.process_index}.safetensors"))
        state = optimizer.state_dict() if accelerator.is_main_process else {}
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        header = dict(meta, step=step)
        if state:
            header["optimizer"] = _save_model_and_optimizer(model, state, tmp)
        (tmp / "state.json").write_text(json.dumps(header, indent=2) + "\n")  # last: marks the dir complete
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for _, old in _checkpoint_dirs(out)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _save_model_and_optimizer(model: nn.Module, state: dict, directory: Path) -> dict:
    from safetensors.torch import save_file

    save_file({n: p.detach().to("cpu").contiguous() for n, p in model.named_parameters()},
              str(directory / "model.safetensors"))
    tensors, scalars = {}, {}
    for idx, entry in state["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{key}"] = value.detach().to("cpu").contiguous()
            else:
                scalars[f"{idx}.{key}"] = value
    save_file(tensors, str(directory / "optimizer.safetensors"))
    return {"param_groups": state["param_groups"], "scalars": scalars}


def _load_checkpoint(accelerator, wrapper: nn.Module, optimizer, path: Path) -> dict:
    from safetensors.torch import load_file

    header = json.loads((path / "state.json").read_text())
    if _is_fsdp(accelerator):
        accelerator.load_state(str(path))
        return header
    if "optimizer" not in header:
        raise TracenasError(f"checkpoint {path} was written by an FSDP run; resume it with FSDP")
    model = accelerator.unwrap_model(wrapper).model
    weights = load_file(str(path / "model.safetensors"))
    params = dict(model.named_parameters())
    if set(weights) != set(params):
        raise TracenasError(f"checkpoint {path} does not match the model (different parameter names); "
                            "was it written for another --model?")
    with torch.no_grad():
        for name, tensor in weights.items():
            if params[name].shape != tensor.shape:
                raise TracenasError(f"checkpoint {path}: {name} has shape {tuple(tensor.shape)}, the model "
                                    f"{tuple(params[name].shape)}; was it written for another --model?")
            params[name].copy_(tensor)
    flat = load_file(str(path / "optimizer.safetensors"))
    opt_meta = header["optimizer"]
    state: dict[int, dict] = {}
    for key, value in list(flat.items()) + list(opt_meta["scalars"].items()):
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": opt_meta["param_groups"]})
    rng_file = path / f"rng_rank{accelerator.process_index}.safetensors"
    if rng_file.is_file():
        rng = load_file(str(rng_file))
        torch.set_rng_state(rng["torch_cpu"])
        if "torch_cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["torch_cuda"])
    return header


# --------------------------------------------------------------------------- outputs


def plot_loss(records: list[dict], path: Path) -> None:
    """Training loss (and LR) against tokens seen, as a PNG. Uses the Agg canvas, no global backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not records:
        return
    fig = Figure(figsize=(7, 4), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = [r["tokens"] for r in records]
    ax.plot(x, [r["loss"] for r in records], lw=0.8, color="tab:blue", label="train loss")
    if len(records) >= 20:
        k = max(5, len(records) // 50)
        smooth = [sum(r["loss"] for r in records[max(0, i - k + 1):i + 1]) / min(k, i + 1) for i in range(len(records))]
        ax.plot(x, smooth, lw=1.6, color="tab:orange", label=f"mean of {k} steps")
    ax.set_xlabel("tokens")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    lr_ax = ax.twinx()
    lr_ax.plot(x, [r["lr"] for r in records], lw=0.8, color="gray", alpha=0.6)
    lr_ax.set_ylabel("learning rate", color="gray")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    os.replace(tmp, path)


def _read_log(path: Path, upto: int) -> list[dict]:
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):  # a line cut short by a kill
            record = json.loads(line)
            if record["step"] <= upto:
                records.append(record)
    return records


def _checkpoint_dtype(source) -> torch.dtype:
    """The dtype a local checkpoint was stored in (config.json), float32 otherwise."""
    if source is None or source.gguf_file or not (Path(source.path) / "config.json").is_file():
        return torch.float32
    cfg = json.loads((Path(source.path) / "config.json").read_text())
    name = str(cfg.get("dtype") or cfg.get("torch_dtype") or "float32")
    return {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(name, torch.float32)


def _recovery_note(cfg: RecoverConfig, result: RecoverResult) -> str:
    return (f"\n## Continued pretraining (tracenas recover)\n\n"
            f"Recovered from `{cfg.model or 'default model'}` on {result.tokens_seen:,} tokens of "
            f"`{cfg.data or 'wikipedia'}` (train split): {result.steps} steps of {cfg.global_batch} x {cfg.seq_len} "
            f"tokens, peak LR {cfg.lr:g}, {cfg.schedule} schedule, final training loss "
            f"{result.final_loss:.4f}. All settings: `../recover.yaml`.\n")


def save_recovered(model: nn.Module, tokenizer, source, cfg: RecoverConfig, result: RecoverResult, target: Path) -> Path:
    """Write the recovered model in the input's format: a tracenas-exported input stays one (its remote
    code and per-layer config included, via `export.save_pruned`), a plain HF input stays plain."""
    dtype = ({"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(cfg.save_dtype)
             or _checkpoint_dtype(source))
    src_dir = Path(source.path) if source is not None and not source.gguf_file and Path(source.path).is_dir() else None
    if getattr(model.config, "tracenas", None):
        from tracenas.export import save_pruned

        save_pruned(model, tokenizer, target, dtype=dtype,
                    card={"recovered from": cfg.model, "recovery tokens": result.tokens_seen,
                          "recovery loss": round(result.final_loss or float("nan"), 4)})
        if src_dir is not None and (src_dir / "README.md").is_file():  # keep the export's model card
            (target / "README.md").write_text((src_dir / "README.md").read_text() + _recovery_note(cfg, result))
        return target
    tmp = target.parent / f".{target.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    to_save = model if dtype == next(model.parameters()).dtype else copy.deepcopy(model).to(dtype)
    to_save.save_pretrained(tmp, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    if src_dir is not None:  # remote code, model card, chat template... whatever the input shipped
        skip = {"config.json", "generation_config.json", "model.safetensors.index.json"}
        for f in src_dir.iterdir():
            if f.is_file() and f.name not in skip and f.suffix not in (".safetensors", ".bin", ".gguf", ".pt") \
                    and not (tmp / f.name).exists():
                shutil.copy2(f, tmp / f.name)
    readme = tmp / "README.md"
    readme.write_text((readme.read_text() if readme.is_file() else f"# {target.name}\n") + _recovery_note(cfg, result))
    old = target.parent / f".{target.name}.old"
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)
    return target


# --------------------------------------------------------------------------- the loop


def _final_model(accelerator, wrapper: nn.Module, cfg: RecoverConfig) -> nn.Module | None:
    """The trained model, whole, on the main process (FSDP: gathered into a fresh CPU copy)."""
    if not _is_fsdp(accelerator):
        return accelerator.unwrap_model(wrapper).model
    full = accelerator.get_state_dict(wrapper)  # the full state dict, on the main process only
    if not accelerator.is_main_process:
        return None
    from tracenas.models.loading import load_model

    model = load_model(cfg.model, dtype=torch.float32, device="cpu", with_tokenizer=False)[0]
    model.load_state_dict({k.removeprefix("model."): v for k, v in full.items()})
    return model


def param_groups(model_or_params: nn.Module | Iterable[nn.Parameter], weight_decay: float) -> list[dict]:
    """AdamW groups: trainable matrices (dim >= 2) decayed, the rest (norms, biases) not; parameter order kept."""
    params = list(model_or_params.parameters() if isinstance(model_or_params, nn.Module) else model_or_params)
    decay = [p for p in params if p.requires_grad and p.dim() >= 2]
    rest = [p for p in params if p.requires_grad and p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def recover(cfg: RecoverConfig, *, model: nn.Module | None = None, tokenizer=None, progress: bool = True,
            callback: Callable[[dict], None] | None = None) -> RecoverResult:
    """Continued pretraining per `cfg`; returns what was done. A passed `model` is trained in place.

    `callback(record)` is called after every optimizer step (after any checkpoint of that step) with
    the record also written to train_log.jsonl; an exception from it stops the run like a kill.
    """
    from accelerate import Accelerator

    from tracenas.models.loading import load_model, resolve_source

    mixed = {"bfloat16": "bf16", "float16": "fp16"}.get(cfg.dtype, "no")
    if cfg.dtype == "auto" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        mixed = "bf16"
    # Under torchrun without GPUs accelerate only forms a (gloo) process group when told to use the CPU.
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1 or "LOCAL_RANK" in os.environ
    accelerator = Accelerator(mixed_precision=mixed, cpu=launched and not torch.cuda.is_available())
    world = accelerator.num_processes
    cfg = cfg.resolved(world)
    out = Path(cfg.out).expanduser()
    main = accelerator.is_main_process
    source = None
    if model is None:
        source = resolve_source(cfg.model)  # clear error for a missing directory before anything heavy
        model, loaded_tok, source = load_model(cfg.model, dtype=torch.float32, device="cpu")
        tokenizer = tokenizer or loaded_tok
    elif cfg.model:
        with contextlib.suppress(TracenasError):
            source = resolve_source(cfg.model)
    if tokenizer is None:
        raise TracenasError("recover() needs a tokenizer with an in-memory model")
    if any(p.dtype != torch.float32 for p in model.parameters()):
        model.float()  # float32 master weights; the compute dtype comes from autocast

    checkpoints = _checkpoint_dirs(out)
    if checkpoints and not cfg.resume:
        raise TracenasError(f"{out} already holds checkpoints (up to step {checkpoints[-1][0]}): pass --resume to "
                            "continue, or choose another --out")
    stream = _training_stream(tokenizer, cfg)
    windows = TrainWindows(stream, cfg.seq_len, cfg.seed)
    tokens_per_step = cfg.global_batch * cfg.seq_len
    total_steps = cfg.tokens // tokens_per_step
    if windows.count < cfg.global_batch or total_steps < 1:
        raise DataError(
            f"not enough training tokens for one step: a step takes {cfg.global_batch} sequences x {cfg.seq_len} "
            f"tokens = {tokens_per_step:,} tokens; the budget is {cfg.tokens:,} tokens and the 'train' split of "
            f"{cfg.data or 'wikipedia'!r} has {stream.numel():,} ({windows.count} windows). Lower --global-batch/"
            "--seq-len, raise --tokens, or pass a bigger --data")
    epochs = total_steps * cfg.global_batch / windows.count
    if epochs > 1:
        log.warning("the budget of %s tokens is %.1f passes over the %s-token training split; data repeats",
                    f"{cfg.tokens:,}", epochs, f"{stream.numel():,}")

    teacher = None
    if cfg.distill:
        if not cfg.teacher:
            raise TracenasError("--distill needs --teacher (the unpruned base model, with the same tokenizer)")
        teacher_dtype = torch.bfloat16 if mixed == "bf16" else torch.float32
        teacher, _, _ = load_model(cfg.teacher, dtype=teacher_dtype, device=accelerator.device, with_tokenizer=False)
        teacher.requires_grad_(False).eval()
        t_vocab = teacher.get_output_embeddings().weight.shape[0]
        s_vocab = model.get_output_embeddings().weight.shape[0]
        if t_vocab != s_vocab:
            raise TracenasError(f"teacher vocabulary ({t_vocab}) differs from the student's ({s_vocab})")

    model.config.use_cache = False
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    wrapper = _LossModel(model, cfg, teacher)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8)
    wrapper, optimizer = accelerator.prepare(wrapper, optimizer)

    start_step, wall_before, resumed_from = 0, 0.0, None
    fingerprint = _fingerprint(cfg, world)
    if cfg.resume and checkpoints:
        step, path = checkpoints[-1]
        with open(path / "state.json") as fh:
            saved = json.load(fh)["fingerprint"]
        changed = [k for k in fingerprint if saved.get(k) != fingerprint[k]]
        if changed:
            diff = ", ".join(f"{k}: {saved.get(k)!r} -> {fingerprint[k]!r}" for k in changed)
            raise TracenasError(f"cannot resume {path}: the settings changed ({diff}); use the same settings "
                                "or another --out")
        header = _load_checkpoint(accelerator, wrapper, optimizer, path)
        start_step, wall_before, resumed_from = step, header["wall_time_s"], step
        log.info("resuming from %s (step %d of %d)", path, step, total_steps)
    elif cfg.resume:
        log.warning("--resume: no checkpoint in %s, starting from scratch", out)

    log_path = out / "train_log.jsonl"
    records = _read_log(log_path, start_step) if main else []
    if main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(out, "recover", cfg, extra={"world_size": world, "total_steps": total_steps,
                                                "tokens_per_step": tokens_per_step})
        log_path.write_text("".join(json.dumps(r) + "\n" for r in records))  # drop steps after the checkpoint
    save_every = cfg.save_every or 0
    end_step = min(total_steps, cfg.stop_after_steps or total_steps)
    per_rank = cfg.global_batch // world
    log.info("recovering %s: %d steps x %d sequences x %d tokens, peak lr %g (%s), %d process(es), %s",
             cfg.model or "model", total_steps, cfg.global_batch, cfg.seq_len, cfg.lr, cfg.schedule, world, mixed)

    from tqdm.auto import tqdm

    bar = tqdm(total=total_steps, initial=start_step, desc="recover", unit="step", dynamic_ncols=True,
               disable=not (progress and main))
    step, run_tokens, run_time, last_plot = start_step, 0, 0.0, time.monotonic()
    try:
        while step < end_step:
            t0 = time.perf_counter()
            lr = lr_at(step, total_steps, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = windows.batch(step * cfg.global_batch + accelerator.process_index * per_rank, per_rank)
            parts: dict[str, float] = {}
            for k in range(cfg.grad_accum):
                ids = batch[k * cfg.micro_batch:(k + 1) * cfg.micro_batch].to(accelerator.device)
                sync = contextlib.nullcontext() if k == cfg.grad_accum - 1 else accelerator.no_sync(wrapper)
                with sync:
                    with accelerator.autocast():
                        loss, terms = wrapper(ids)
                    accelerator.backward(loss / cfg.grad_accum)
                for name, value in terms.items():
                    parts[name] = parts.get(name, 0.0) + float(value) / cfg.grad_accum
            grad_norm = None
            if cfg.max_grad_norm > 0:
                grad_norm = float(accelerator.clip_grad_norm_(wrapper.parameters(), cfg.max_grad_norm))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if world > 1:
                packed = accelerator.reduce(torch.tensor(list(parts.values()), device=accelerator.device), "mean")
                parts = dict(zip(parts, packed.tolist()))
            dt = time.perf_counter() - t0
            run_tokens += tokens_per_step
            run_time += dt
            loss_value = parts.get("loss", parts.get("ce"))
            if not math.isfinite(loss_value):
                raise TracenasError(f"the training loss became {loss_value} at step {step}; lower --lr "
                                    "(or use --dtype float32)")
            record = {"step": step, "loss": loss_value, "lr": lr, "tokens": step * tokens_per_step,
                      "tokens_per_s": tokens_per_step / dt, "grad_norm": grad_norm}
            if cfg.distill:
                record.update(ce=parts["ce"], kl=parts["kl"])
            records.append(record)
            if main:
                with open(log_path, "a") as fh:
                    fh.write(json.dumps(record) + "\n")
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.3f}", tok_s=f"{run_tokens / run_time:,.0f}", lr=f"{lr:.2e}")
            if (save_every and step % save_every == 0) or step == end_step < total_steps:
                meta = {"fingerprint": fingerprint, "tokens_seen": step * tokens_per_step,
                        "wall_time_s": wall_before + run_time, "total_steps": total_steps}
                _save_checkpoint(accelerator, wrapper, optimizer, out, step, meta, cfg.keep_checkpoints)
                if main and time.monotonic() - last_plot > 60:  # a live curve for long runs, cheap for short ones
                    plot_loss(records, out / "loss.png")
                    last_plot = time.monotonic()
            if callback is not None:
                callback(record)
    finally:
        bar.close()

    tail = [r["loss"] for r in records[-10:]]
    completed = step >= total_steps
    result = RecoverResult(
        final_loss=sum(tail) / len(tail) if tail else None, last_loss=tail[-1] if tail else None, steps=step,
        total_steps=total_steps, tokens_seen=step * tokens_per_step, wall_time_s=wall_before + run_time,
        tokens_per_s=run_tokens / run_time if run_time else 0.0, path=None, out=str(out), completed=completed,
        resumed_from=resumed_from)
    if completed:
        model.config.use_cache = True
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_disable()
        model.eval()
        result.path = str(out / "model")
        final = _final_model(accelerator, wrapper, cfg)
        if main:
            save_recovered(final, tokenizer, source, cfg, result, out / "model")
    else:
        log.info("stopped at step %d of %d; continue with --resume", step, total_steps)
    if main:
        plot_loss(records, out / "loss.png")
        atomic_write_json(out / "recover.json", result.as_dict())
    accelerator.wait_for_everyone()
    return result


__all__ = ["PRESETS", "RecoverConfig", "RecoverResult", "chunked_lm_loss", "lr_at", "parse_count", "plot_loss",
           "recover", "save_recovered"]
