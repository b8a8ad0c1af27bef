"""The recovered model, written in the input's format (tracenas export or plain HF) with a model card note."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import torch
from torch import nn

from tracenas.runtime.device import DTYPES, to_torch_dtype
from tracenas.models.loading import public_name
from tracenas.recover.config import RecoverConfig, RecoverResult
from tracenas.runtime.rundir import install_dir, staging_dir


def _checkpoint_dtype(source) -> torch.dtype:
    """The dtype a local checkpoint was stored in (config.json), float32 otherwise."""
    if source is None or source.gguf_file or not (Path(source.path) / "config.json").is_file():
        return torch.float32
    cfg = json.loads((Path(source.path) / "config.json").read_text())
    name = str(cfg.get("dtype") or cfg.get("torch_dtype") or "float32")
    return DTYPES.get(name.replace("torch.", ""), torch.float32)


def _recovery_note(cfg: RecoverConfig, result: RecoverResult) -> str:
    """The model card section on recovery; like the export's card, it names inputs without absolute paths."""
    return (f"\n## Continued pretraining (tracenas recover)\n\n"
            f"Recovered from `{public_name(cfg.model or 'default')}` on {result.tokens_seen:,} tokens of "
            f"`{public_name(cfg.data) if cfg.data else 'wikipedia'}` (train split): {result.steps} steps of "
            f"{cfg.global_batch} x {cfg.seq_len} "
            f"tokens, peak LR {cfg.lr:g}, {cfg.schedule} schedule, final training loss "
            f"{result.final_loss:.4f}. All settings: `../recover.yaml`.\n")


def save_recovered(model: nn.Module, tokenizer, source, cfg: RecoverConfig, result: RecoverResult, target: Path) -> Path:
    """Write the recovered model in the input's format: a tracenas-exported input stays one (its remote
    code and per-layer config included, via `export.save_pruned`), a plain HF input stays plain."""
    dtype = _checkpoint_dtype(source) if cfg.save_dtype == "auto" else to_torch_dtype(cfg.save_dtype)
    src_dir = Path(source.path) if source is not None and not source.gguf_file and Path(source.path).is_dir() else None
    if getattr(model.config, "tracenas", None):
        from tracenas.models.pruned import save_pruned

        save_pruned(model, tokenizer, target, dtype=dtype,
                    card={"recovered from": public_name(cfg.model or "default"), "recovery tokens": result.tokens_seen,
                          "recovery loss": round(result.final_loss or float("nan"), 4)})
        if src_dir is not None and (src_dir / "README.md").is_file():  # keep the export's model card
            (target / "README.md").write_text((src_dir / "README.md").read_text() + _recovery_note(cfg, result))
        return target
    tmp = staging_dir(target)
    try:
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
        install_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
