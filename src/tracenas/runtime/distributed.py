"""Ranks of a `torchrun` job: which process am I, which device is mine, and "score my share, gather everyone's".

    torchrun --nproc-per-node 2 -m tracenas search --out runs/s ...        # one node, 2 ranks (gloo on CPU)
    dist = init_dist()                                  # Dist(rank, world); a no-op without torchrun
    for value in map_ranks(score, genomes, dist, costs=[...]):   # in the order of `genomes`, on every rank
        ...

`map_ranks` is the piece every search strategy shares (evolution, and the training-aware ones): each
rank computes its shard of a list of work items, the results are all-gathered, and every rank sees the
same list in the same order, so the strategies' state (RNG, population, cache) stays identical on all
ranks without any other communication. Shards are balanced by a cost estimate (a candidate's kept
parameters: sliced scoring costs what a candidate keeps). With one process nothing is gathered and
results are yielded one by one as they are computed (a search saves its state after every candidate).

Backends: `cpu:gloo,cuda:nccl` when CUDA is available (object collectives go over gloo, which is all the
search needs; NCCL is there for tensor collectives), `gloo` otherwise; `TRACENAS_DIST_BACKEND` overrides both. Across nodes torchrun's
rendezvous does the rest (docs/scale.md).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch

from tracenas.runtime.errors import TracenasError

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Dist:
    """This process's place in the job: `rank` of `world` (`world` 1: no torch.distributed at all)."""

    rank: int = 0
    world: int = 1
    own_group: bool = False  # this process created the process group (and destroys it in `close`)
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, indexed by rank (picklable Python objects; small ones)."""
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        if self.world == 1:
            return obj
        import torch.distributed as dist

        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def run_on_main(self, fn: Callable[[], R]) -> R:
        """`fn()` on rank 0 only (reading or writing the run directory, the anchor pass); its result on every
        rank. If it raises, every rank raises (the same `TracenasError`, or `RankFailed` naming another
        error), so no rank is left waiting for a result that never comes."""
        if self.world == 1:
            return fn()
        result, error, own = None, None, None
        if self.is_main:
            try:
                result = fn()
            except Exception as err:  # noqa: BLE001 - told to the other ranks, then raised again below
                own = err
                error = err if isinstance(err, TracenasError) else RankFailed(f"rank 0 failed: {type(err).__name__}: {err}")
        result, error = self.broadcast((result, error))
        if own is not None:
            raise own
        if error is not None:
            raise error
        return result

    def close(self) -> None:
        if self.own_group:
            import torch.distributed as dist

            dist.destroy_process_group()


def default_backend() -> str:
    """`TRACENAS_DIST_BACKEND` if set (e.g. `gloo` to keep NCCL out of a GPU job), else the module docstring's."""
    return os.environ.get("TRACENAS_DIST_BACKEND") or ("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")


def init_dist(backend: str | None = None, timeout_hours: float = 24.0) -> Dist:
    """Join the torchrun job this process belongs to (WORLD_SIZE > 1), or return the single-process `Dist()`.

    Reuses a process group someone else initialised (then `close` leaves it alone).
    """
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_available() and dist.is_initialized():
        return Dist(dist.get_rank(), dist.get_world_size(), False, local)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if not dist.is_available():
            raise TracenasError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        dist.init_process_group(backend or default_backend(), timeout=timedelta(hours=timeout_hours))
        return Dist(dist.get_rank(), dist.get_world_size(), True, local)
    return Dist()


def rank_device(device: torch.device, dist: Dist) -> torch.device:
    """`cuda` without an index means this rank's GPU (`LOCAL_RANK`) when there are several ranks, else the current
    one; the result always has an index (`torch.cuda.set_device` refuses a bare `cuda` on recent torch)."""
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", dist.local_rank if dist.world > 1 else torch.cuda.current_device())
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def balanced_shards(costs: Sequence[float], world: int) -> list[list[int]]:
    """Item indices per rank, balancing the summed cost (longest first onto the least loaded rank; ties by
    index, so every rank computes the same split). Each shard is in increasing index order."""
    load = [0.0] * world
    shards: list[list[int]] = [[] for _ in range(world)]
    for i in sorted(range(len(costs)), key=lambda k: (-float(costs[k]), k)):
        r = min(range(world), key=lambda q: (load[q], q))
        shards[r].append(i)
        load[r] += float(costs[i])
    return [sorted(s) for s in shards]


@dataclass
class _Failed:
    rank: int
    message: str


class RankFailed(TracenasError):
    """A rank raised while computing its shard; every rank raises this, so no rank waits forever."""


def map_ranks(fn: Callable[[T], R], items: Sequence[T], dist: Dist,
              costs: Sequence[float] | None = None) -> Iterator[R]:
    """`fn(item)` for every item, in order, on every rank; each rank computes only its shard.

    One process: yields each result as soon as it is computed. Several: this rank computes its shard
    (`balanced_shards` of `costs`, equal costs by default), then one all-gather; an exception on any rank
    becomes `RankFailed` on all of them (the failing rank re-raises its own).
    """
    if dist.world == 1:
        for item in items:
            yield fn(item)
        return
    shards = balanced_shards(costs if costs is not None else [1.0] * len(items), dist.world)
    mine: list[tuple[int, Any]] | _Failed
    error: BaseException | None = None
    try:
        mine = [(i, fn(items[i])) for i in shards[dist.rank]]
    except Exception as err:  # noqa: BLE001 - told to the other ranks, then raised again below
        mine, error = _Failed(dist.rank, f"{type(err).__name__}: {err}"), err
    gathered = dist.all_gather(mine)
    failed = [g for g in gathered if isinstance(g, _Failed)]
    if error is not None:
        raise error
    if failed:
        raise RankFailed(f"rank {failed[0].rank} failed while scoring its candidates: {failed[0].message}")
    results: dict[int, Any] = {}
    for part in gathered:
        results.update(part)
    for i in range(len(items)):
        yield results[i]


__all__ = ["Dist", "RankFailed", "balanced_shards", "default_backend", "init_dist", "map_ranks", "rank_device"]
