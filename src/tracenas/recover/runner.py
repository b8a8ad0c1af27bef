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

from tracenas.config import atomic_write_json, save_config
from tracenas.errors import DataError, TracenasError
from tracenas.recover.checkpoints import (CHECKPOINTS, _checkpoint_dirs, _fingerprint, _is_fsdp, _load_checkpoint, _read_log,
                                          _save_checkpoint)
from tracenas.recover.config import RecoverConfig, RecoverResult
from tracenas.recover.losses import _LossModel
from tracenas.recover.plots import plot_loss
from tracenas.recover.save import save_recovered
from tracenas.recover.schedule import lr_at, param_groups
from tracenas.recover.windows import TrainWindows, _training_stream
from tracenas.rundir import RunDirGuard, check_writable_dir

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


def _remove_partial_checkpoints(out: Path) -> None:
    """A kill while a checkpoint was being written leaves `checkpoints/.tmp-step-N`: never resumable, so removed."""
    root = out / CHECKPOINTS
    if root.is_dir():
        for tmp in root.glob(".tmp-step-*"):
            shutil.rmtree(tmp, ignore_errors=True)
            log.info("removed the partial checkpoint %s", tmp)


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
    check_writable_dir(out)
    if main:
        _remove_partial_checkpoints(out)
    guard = RunDirGuard(out, resumable=lambda: bool(_checkpoint_dirs(out))) if main else contextlib.nullcontext()
    with guard:
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
