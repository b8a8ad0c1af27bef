"""`recover`: the training loop (accelerate: one process, DDP or FSDP), resume, and the final save."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from tracenas.runtime.config import atomic_write_json, save_config
from tracenas.runtime.errors import DataError, TracenasError
from tracenas.recover.checkpoints import (CHECKPOINTS, _checkpoint_dirs, remove_partial_checkpoints, _fingerprint, _is_fsdp, _load_checkpoint, _read_log,
                                          _save_checkpoint)
from tracenas.recover.config import RecoverConfig, RecoverResult
from tracenas.recover.losses import _LossModel
from tracenas.recover.plots import plot_loss
from tracenas.recover.save import save_recovered
from tracenas.recover.schedule import lr_at
from tracenas.runtime.optim import param_groups
from tracenas.recover.windows import TrainWindows, _training_stream
from tracenas.runtime.device import using_threads
from tracenas.runtime.logs import run_log
from tracenas.runtime.rundir import RunDirGuard, check_writable_dir

log = logging.getLogger("tracenas.recover")  # one logger for the package: log lines name it as before the split


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


class Recovery:
    """Continued pretraining as named steps (torchtune's recipe shape), so that a variant overrides one step.

        run = Recovery(cfg)
        run.setup()            # accelerator, model, data, teacher, optimizer, resume
        run.train()            # optimizer steps with logging and checkpoints
        result = run.finalize()
    """

    def __init__(self, cfg: RecoverConfig, *, model: nn.Module | None = None, tokenizer=None, progress: bool = True,
                 callback: Callable[[dict], None] | None = None) -> None:
        self.cfg, self.model, self.tokenizer = cfg, model, tokenizer
        self.progress, self.callback = progress, callback
        self.source = None
        self.records: list[dict] = []
        self.start_step, self.wall_before, self.resumed_from = 0, 0.0, None
        self.step, self.run_tokens, self.run_time = 0, 0, 0.0

    # --- setup -------------------------------------------------------------------------------------
    def setup_accelerator(self) -> None:
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState

        cfg = self.cfg
        mixed = {"bfloat16": "bf16", "float16": "fp16"}.get(cfg.dtype, "no")
        if cfg.dtype == "auto" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            mixed = "bf16"
        # Under torchrun without GPUs accelerate only forms a (gloo) process group when told to use the CPU.
        launched = int(os.environ.get("WORLD_SIZE", "1")) > 1 or "LOCAL_RANK" in os.environ
        self.mixed = mixed
        # accelerate keeps one mixed-precision setting per process and refuses another; a library caller may run a
        # float32 recovery and then a bf16 one, so forget the previous run's choice (the process group is kept)
        AcceleratorState._reset_state(reset_partial_state=False)
        self.accelerator = Accelerator(mixed_precision=mixed, cpu=launched and not torch.cuda.is_available())
        self.world = self.accelerator.num_processes
        self.cfg = cfg.resolved(self.world)
        self.out = Path(self.cfg.out).expanduser()
        self.main = self.accelerator.is_main_process

    def setup(self) -> None:
        """Everything before the first step; the output directory must exist (see `run`)."""
        self.setup_model()
        self.setup_data()
        self.setup_teacher()
        self.setup_optimizer()
        self.resume()
        self.setup_log()

    def setup_model(self) -> None:
        from tracenas.models.loading import load_model, resolve_source

        cfg = self.cfg
        self.checkpoints = _checkpoint_dirs(self.out)
        if not self.checkpoints and is_done(self.out):  # its checkpoints were deleted once the model was saved
            raise TracenasError(f"{self.out} already holds a finished recovery (recover.json, model/): nothing to "
                                "resume; choose another --out, or delete it to train again")
        if self.checkpoints and not cfg.resume:
            raise TracenasError(f"{self.out} already holds checkpoints (up to step {self.checkpoints[-1][0]}): pass "
                                "--resume to continue, or choose another --out")
        if self.model is None:
            self.source = resolve_source(cfg.model)  # clear error for a missing directory before anything heavy
            self.model, loaded_tok, self.source = load_model(cfg.model, dtype=torch.float32, device="cpu")
            self.tokenizer = self.tokenizer or loaded_tok
        elif cfg.model:
            with contextlib.suppress(TracenasError):
                self.source = resolve_source(cfg.model)
        if self.tokenizer is None:
            raise TracenasError("recover() needs a tokenizer with an in-memory model")
        if any(p.dtype != torch.float32 for p in self.model.parameters()):
            self.model.float()  # float32 master weights; the compute dtype comes from autocast

    def setup_data(self) -> None:
        cfg = self.cfg
        stream = _training_stream(self.tokenizer, cfg)
        self.windows = TrainWindows(stream, cfg.seq_len, cfg.seed)
        self.tokens_per_step = cfg.global_batch * cfg.seq_len
        self.total_steps = cfg.tokens // self.tokens_per_step
        if self.windows.count < cfg.global_batch or self.total_steps < 1:
            raise DataError(
                f"not enough training tokens for one step: a step takes {cfg.global_batch} sequences x {cfg.seq_len} "
                f"tokens = {self.tokens_per_step:,} tokens; the budget is {cfg.tokens:,} tokens and the 'train' split of "
                f"{cfg.data or 'wikipedia'!r} has {stream.numel():,} ({self.windows.count} windows). Lower --global-batch/"
                "--seq-len, raise --tokens, or pass a bigger --data")
        epochs = self.total_steps * cfg.global_batch / self.windows.count
        if epochs > 1:
            log.warning("the budget of %s tokens is %.1f passes over the %s-token training split; data repeats",
                        f"{cfg.tokens:,}", epochs, f"{stream.numel():,}")

    def setup_teacher(self) -> None:
        from tracenas.models.loading import load_model

        cfg = self.cfg
        self.teacher = None
        if not cfg.distill:
            return
        if not cfg.teacher:
            raise TracenasError("--distill needs --teacher (the unpruned base model, with the same tokenizer)")
        teacher_dtype = torch.bfloat16 if self.mixed == "bf16" else torch.float32
        self.teacher, _, _ = load_model(cfg.teacher, dtype=teacher_dtype, device=self.accelerator.device,
                                        with_tokenizer=False)
        self.teacher.requires_grad_(False).eval()
        t_vocab = self.teacher.get_output_embeddings().weight.shape[0]
        s_vocab = self.model.get_output_embeddings().weight.shape[0]
        if t_vocab != s_vocab:
            raise TracenasError(f"teacher vocabulary ({t_vocab}) differs from the student's ({s_vocab})")

    def setup_optimizer(self) -> None:
        cfg, model = self.cfg, self.model
        model.config.use_cache = False
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        wrapper = _LossModel(model, cfg, self.teacher)
        optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8)
        self.wrapper, self.optimizer = self.accelerator.prepare(wrapper, optimizer)

    def resume(self) -> None:
        """Load the newest checkpoint when resuming; refuse one written under other settings."""
        cfg = self.cfg
        self.fingerprint = _fingerprint(cfg, self.world)
        if cfg.resume and self.checkpoints:
            step, path = self.checkpoints[-1]
            with open(path / "state.json") as fh:
                saved = json.load(fh)["fingerprint"]
            changed = [k for k in self.fingerprint if saved.get(k) != self.fingerprint[k]]
            if changed:
                diff = ", ".join(f"{k}: {saved.get(k)!r} -> {self.fingerprint[k]!r}" for k in changed)
                raise TracenasError(f"cannot resume {path}: the settings changed ({diff}); use the same settings "
                                    "or another --out")
            header = _load_checkpoint(self.accelerator, self.wrapper, self.optimizer, path)
            self.start_step, self.wall_before, self.resumed_from = step, header["wall_time_s"], step
            log.info("resuming from %s (step %d of %d)", path, step, self.total_steps)
        elif cfg.resume:
            log.warning("--resume: no checkpoint in %s, starting from scratch", self.out)

    def setup_log(self) -> None:
        cfg = self.cfg
        self.log_path = self.out / "train_log.jsonl"
        self.records = _read_log(self.log_path, self.start_step) if self.main else []
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            save_config(self.out, "recover", cfg, extra={"world_size": self.world, "total_steps": self.total_steps,
                                                         "tokens_per_step": self.tokens_per_step})
            # drop steps after the checkpoint
            self.log_path.write_text("".join(json.dumps(r) + "\n" for r in self.records))
        log.info("recovering %s: %d steps x %d sequences x %d tokens, peak lr %g (%s), %d process(es), %s",
                 cfg.model or "model", self.total_steps, cfg.global_batch, cfg.seq_len, cfg.lr, cfg.schedule,
                 self.world, self.mixed)

    # --- training ----------------------------------------------------------------------------------
    def train(self) -> None:
        from tqdm.auto import tqdm

        cfg = self.cfg
        end_step = min(self.total_steps, cfg.stop_after_steps or self.total_steps)
        bar = tqdm(total=self.total_steps, initial=self.start_step, desc="recover", unit="step", dynamic_ncols=True,
                   disable=not (self.progress and self.main))
        self.step, last_plot = self.start_step, time.monotonic()
        try:
            while self.step < end_step:
                record = self.train_step()
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{self.run_tokens / self.run_time:,.0f}",
                                lr=f"{record['lr']:.2e}")
                if (cfg.save_every and self.step % cfg.save_every == 0) or self.step == end_step < self.total_steps:
                    self.save_checkpoint()
                    if self.main and time.monotonic() - last_plot > 60:  # a live curve for long runs
                        plot_loss(self.records, self.out / "loss.png")
                        last_plot = time.monotonic()
                if self.callback is not None:
                    self.callback(record)
        finally:
            bar.close()

    def train_step(self) -> dict:
        """One optimizer step over `global_batch` sequences (accumulated); returns its log record."""
        cfg, accelerator = self.cfg, self.accelerator
        t0 = time.perf_counter()
        lr = lr_at(self.step, self.total_steps, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        per_rank = cfg.global_batch // self.world
        batch = self.windows.batch(self.step * cfg.global_batch + accelerator.process_index * per_rank, per_rank)
        parts: dict[str, float] = {}
        for k in range(cfg.grad_accum):
            ids = batch[k * cfg.micro_batch:(k + 1) * cfg.micro_batch].to(accelerator.device)
            sync = contextlib.nullcontext() if k == cfg.grad_accum - 1 else accelerator.no_sync(self.wrapper)
            with sync:
                with accelerator.autocast():
                    loss, terms = self.wrapper(ids)
                accelerator.backward(loss / cfg.grad_accum)
            for name, value in terms.items():
                parts[name] = parts.get(name, 0.0) + float(value) / cfg.grad_accum
        grad_norm = None
        if cfg.max_grad_norm > 0:
            grad_norm = float(accelerator.clip_grad_norm_(self.wrapper.parameters(), cfg.max_grad_norm))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        if self.world > 1:
            packed = accelerator.reduce(torch.tensor(list(parts.values()), device=accelerator.device), "mean")
            parts = dict(zip(parts, packed.tolist()))
        dt = time.perf_counter() - t0
        self.run_tokens += self.tokens_per_step
        self.run_time += dt
        loss_value = parts.get("loss", parts.get("ce"))
        if not math.isfinite(loss_value):
            raise TracenasError(f"the training loss became {loss_value} at step {self.step}; lower --lr "
                                "(or use --dtype float32)")
        record = {"step": self.step, "loss": loss_value, "lr": lr, "tokens": self.step * self.tokens_per_step,
                  "tokens_per_s": self.tokens_per_step / dt, "grad_norm": grad_norm}
        if cfg.distill:
            record.update(ce=parts["ce"], kl=parts["kl"])
        self.records.append(record)
        if self.main:
            with open(self.log_path, "a") as fh:
                fh.write(json.dumps(record) + "\n")
        return record

    def save_checkpoint(self) -> None:
        meta = {"fingerprint": self.fingerprint, "tokens_seen": self.step * self.tokens_per_step,
                "wall_time_s": self.wall_before + self.run_time, "total_steps": self.total_steps}
        _save_checkpoint(self.accelerator, self.wrapper, self.optimizer, self.out, self.step, meta,
                         self.cfg.keep_checkpoints)

    # --- end -----------------------------------------------------------------------------------------
    def finalize(self) -> RecoverResult:
        """The result; when every step is done, the recovered model saved to OUT/model."""
        cfg = self.cfg
        tail = [r["loss"] for r in self.records[-10:]]
        completed = self.step >= self.total_steps
        result = RecoverResult(
            final_loss=sum(tail) / len(tail) if tail else None, last_loss=tail[-1] if tail else None,
            steps=self.step, total_steps=self.total_steps, tokens_seen=self.step * self.tokens_per_step,
            wall_time_s=self.wall_before + self.run_time,
            tokens_per_s=self.run_tokens / self.run_time if self.run_time else 0.0, path=None, out=str(self.out),
            completed=completed, resumed_from=self.resumed_from,
            compute_dtype={"bf16": "bfloat16", "fp16": "float16"}.get(self.mixed, "float32"),
            teacher=self.cfg.teacher if self.cfg.distill else None)
        if completed:
            model = self.model
            model.config.use_cache = True
            if cfg.gradient_checkpointing:
                model.gradient_checkpointing_disable()
            model.eval()
            result.path = str(self.out / "model")
            final = _final_model(self.accelerator, self.wrapper, cfg)
            if self.main:
                save_recovered(final, self.tokenizer, self.source, cfg, result, self.out / "model")
        else:
            log.info("stopped at step %d of %d; continue with --resume", self.step, self.total_steps)
        if self.main:
            plot_loss(self.records, self.out / "loss.png")
            atomic_write_json(self.out / "recover.json", result.as_dict())
        self.accelerator.wait_for_everyone()
        if completed and self.main and not cfg.keep_final_checkpoints:
            shutil.rmtree(self.out / CHECKPOINTS, ignore_errors=True)  # recover.json now says it is done
        return result

    def run(self) -> RecoverResult:
        """setup → train → finalize inside the output directory; a failure with nothing resumable leaves the
        disk as it was (`RunDirGuard`)."""
        self.setup_accelerator()
        check_writable_dir(self.out)
        if self.main:
            remove_partial_checkpoints(self.out)
        guard = (RunDirGuard(self.out, resumable=lambda: bool(_checkpoint_dirs(self.out))) if self.main
                 else contextlib.nullcontext())
        with guard, (run_log(self.out, "recover") if self.main else contextlib.nullcontext()), \
                using_threads(self.cfg.threads):
            self.setup()
            self.train()
            return self.finalize()


def is_done(out: str | os.PathLike, cfg: RecoverConfig | None = None) -> bool:
    """Whether the recovery in `out` (with `cfg`: in `cfg.out`) ran every step (its `recover.json` says so)."""
    path = Path(cfg.out if cfg is not None else out) / "recover.json"
    return path.is_file() and bool(json.loads(path.read_text()).get("completed"))


def recover(cfg: RecoverConfig, *, model: nn.Module | None = None, tokenizer=None, progress: bool = True,
            callback: Callable[[dict], None] | None = None) -> RecoverResult:
    """Continued pretraining per `cfg`; returns what was done. A passed `model` is trained in place.

    `callback(record)` is called after every optimizer step (after any checkpoint of that step) with
    the record also written to train_log.jsonl; an exception from it stops the run like a kill.
    """
    return Recovery(cfg, model=model, tokenizer=tokenizer, progress=progress, callback=callback).run()
