"""The one place that turns `--device` / `--dtype` / `--threads` values ("auto", "cuda:1", "bfloat16", 4, ...) -> torch settings, with clear errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from tracenas.runtime.errors import TracenasError


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise TracenasError(f"bad --device {device!r}: {err}") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TracenasError("--device cuda requested but no CUDA device is available")
    return dev


DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}


def to_torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """`"bfloat16"`, `"bf16"`, `"torch.float16"`, a `torch.dtype`... -> the `torch.dtype`; one-line error otherwise."""
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[str(dtype).lower().replace("torch.", "")]
    except KeyError:
        raise TracenasError(f"unknown dtype {dtype!r}; choose float32, bfloat16 or float16") from None


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto` is bf16 on a GPU and float32 on the CPU; anything else as `to_torch_dtype`."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return to_torch_dtype(dtype)


@contextmanager
def using_threads(threads: int | None) -> Iterator[None]:
    """`set_threads(threads)` for the block, then torch's previous count again (a library run leaves the
    caller's setting as it found it)."""
    previous = set_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op CPU threads (None leaves torch's choice); returns the previous count.

    On a small shared machine, one thread per process is often several times faster than torch's
    default of one per core, because oversubscribed OpenMP threads spin-wait on each other.
    """
    previous = torch.get_num_threads()
    if threads is None:
        return previous
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise TracenasError(f"--threads must be a positive integer, got {threads!r}")
    torch.set_num_threads(threads)
    return previous
