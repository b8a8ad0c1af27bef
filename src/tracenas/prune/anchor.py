"""A search's importance anchor on disk (`search/anchor.safetensors`): the Wanda-style importance it ranked heads and
channels by, and the base model's traces when its proxy needs them. Written by the search, read by its resume and
by `tracenas export --candidate`.
"""

from __future__ import annotations

import os
from pathlib import Path

from tracenas.prune.masking import Importance
from tracenas.runtime.rundir import save_tensors

ANCHOR = "search/anchor.safetensors"  # relative to the run directory


def save_anchor(path: Path, importance: Importance, base: dict | None) -> None:
    """Write the importance (and base traces) atomically; the search's resume and `export --candidate` read it."""
    tensors = {f"importance.{k}": v.contiguous() for k, v in importance.state_dict().items()}
    for (i, name), t in (base or {}).items():
        tensors[f"trace.{i}.{name}"] = t.contiguous()
    tmp = path.with_suffix(".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_tensors(tensors, tmp)
    os.replace(tmp, path)


def load_anchor(path: Path) -> tuple[Importance, dict]:
    """The importance (and base traces, if any) a search saved in `search/anchor.safetensors`."""
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    imp = Importance.from_state_dict({k[len("importance."):]: v for k, v in tensors.items()
                                      if k.startswith("importance.")})
    base = {}
    for k, v in tensors.items():
        if k.startswith("trace."):
            _, i, name = k.split(".", 2)
            base[(int(i), name)] = v
    return imp, base
