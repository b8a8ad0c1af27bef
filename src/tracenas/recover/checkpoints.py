"""OUT/checkpoints/step-N: write (atomically, keeping the newest few), find and load them; the fingerprint a
resume must match; train_log.jsonl read back up to the checkpoint."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tracenas.runtime.errors import TracenasError
from tracenas.recover.config import RecoverConfig
from tracenas.runtime.rundir import install_dir

_TRAJECTORY = ("data", "tokens", "seq_len", "micro_batch", "global_batch", "grad_accum", "lr", "schedule",
               "warmup_frac", "stable_frac", "decay_frac", "min_lr_ratio", "weight_decay", "max_grad_norm", "seed",
               "dtype", "distill", "distill_alpha", "distill_temperature", "teacher", "loss_chunk")
log = logging.getLogger("tracenas.recover")
CHECKPOINTS = "checkpoints"
_PARTIAL = ".tmp-step-"  # a checkpoint being written; renamed to step-N once complete
_STEP_DIR = re.compile(r"^step-(\d+)$")


def _checkpoint_dirs(out: Path) -> list[tuple[int, Path]]:
    root = out / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and
             (p / "state.json").is_file()]
    return sorted(found)


def remove_partial_checkpoints(out: Path) -> None:
    """A kill while a checkpoint was being written leaves `checkpoints/.tmp-step-N`: never resumable, so removed."""
    root = out / CHECKPOINTS
    if root.is_dir():
        for tmp in root.glob(f"{_PARTIAL}*"):
            shutil.rmtree(tmp, ignore_errors=True)
            log.info("removed the partial checkpoint %s", tmp)


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
    tmp, final = root / f"{_PARTIAL}{step}", root / f"step-{step}"
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
        install_dir(tmp, final)
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
