"""Score a list of candidates split over the ranks of a torchrun job, every rank ending with every result.

    results = split_map(fn, items)    # rank r computes fn(items[i]) for i = r, r + W, r + 2W, ...; all-gather

Without torchrun (WORLD_SIZE unset or 1) it is a plain loop. Under torchrun the default process group is
started on first use (gloo on CPU, NCCL when the current device is CUDA) unless the caller already did.
Results travel as pickled objects (`all_gather_object`), so `fn` must return something picklable and
deterministic: every rank then holds the same list, in the order of `items`, as one process would compute it.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Callable, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def world() -> tuple[int, int]:
    """(rank, world size), starting the default process group under torchrun if nobody has."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("TRACENAS_DIST_BACKEND") != "gloo" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend, timeout=timedelta(hours=24))
    return dist.get_rank(), dist.get_world_size()


def split_map(fn: Callable[[T], R], items: list[T]) -> list[R]:
    """`[fn(x) for x in items]`, each rank computing its share (see the module docstring)."""
    rank, size = world()
    if size == 1:
        return [fn(x) for x in items]
    import torch.distributed as dist

    mine = [(i, fn(items[i])) for i in range(rank, len(items), size)]
    parts: list = [None] * size
    dist.all_gather_object(parts, mine)
    out: list = [None] * len(items)
    for part in parts:
        for i, result in part:
            out[i] = result
    return out


def is_main() -> bool:
    return world()[0] == 0


def barrier() -> None:
    if world()[1] > 1:
        import torch.distributed as dist

        dist.barrier()


__all__ = ["barrier", "is_main", "split_map", "world"]
