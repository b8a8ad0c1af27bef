"""The search's run directory: every file a search writes or reads back, in one place (every recipe uses it).

    store = SearchStore(out)
    store.write_state(strategy.state_dict())    # search/state.json, atomically
    store.append(record, timing)                # one line each in history.jsonl and search/timings.jsonl
    store.truncate(state.history_len)           # on resume: the records the saved state knows, no more
    store.write_arch(arch_file); store.write_summary(summary)
    is_done(out, generations); saved_candidates(out); saved_config(out)

Run directory:
    search.yaml            resolved config          arch.json        best genome, sizes, score
    history.jsonl          every scored candidate   search.log       log of the run
    search/state.json      the strategy's state: population, cache, RNG, the generation in progress (atomic,
                           after every scored candidate and every generation)
    search/timings.jsonl   seconds per candidate    search/summary.json  cost of the search
(search/anchor.safetensors, the plots and a level search's database are written by their own modules.)
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import yaml

from tracenas.arch import ArchFile
from tracenas.runtime.config import atomic_write_json, atomic_write_text
from tracenas.runtime.errors import RunDirError
from tracenas.search.config import SearchConfig

CONFIG = "search.yaml"
ARCH = "arch.json"
HISTORY = "history.jsonl"
STATE = "search/state.json"
TIMINGS = "search/timings.jsonl"
SUMMARY = "search/summary.json"

_MAY_CHANGE_ON_RESUME = ("resume", "iterations", "out", "threads")  # a resumed search may be extended, or moved


class SearchStore:
    """The files of the search in `out`."""

    def __init__(self, out: str | os.PathLike) -> None:
        self.out = Path(out)
        self.history, self.timings = self.out / HISTORY, self.out / TIMINGS
        self.state = self.out / STATE

    def has_state(self) -> bool:
        return self.state.exists()

    def read_state(self) -> dict:
        return json.loads(self.state.read_text())

    def write_state(self, state: dict) -> None:
        atomic_write_json(self.state, state)

    def read_history(self) -> list[dict]:
        if not self.history.exists():
            return []
        return [json.loads(line) for line in self.history.read_text().splitlines() if line.strip()]

    def append(self, record: dict, timing: dict) -> None:
        """One scored candidate: its record in history.jsonl, its seconds in search/timings.jsonl (kept apart so
        that equal runs give byte-identical histories)."""
        with open(self.history, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        with open(self.timings, "a") as fh:
            fh.write(json.dumps(timing) + "\n")

    def truncate(self, n: int) -> None:
        """Keep the first `n` records (those of the candidates the saved state knows): history.jsonl must hold
        them, search/timings.jsonl may hold fewer."""
        _truncate_jsonl(self.history, n)
        _truncate_jsonl(self.timings, n, required=False)

    def clear(self) -> None:
        """A new search: no records of an earlier one."""
        for p in (self.history, self.timings):
            if p.exists():
                p.unlink()

    def write_arch(self, arch: ArchFile) -> None:
        atomic_write_text(self.out / ARCH, arch.to_json() + "\n")

    def write_summary(self, summary: dict) -> None:
        atomic_write_json(self.out / SUMMARY, summary)


def _truncate_jsonl(path: Path, n: int, required: bool = True) -> None:
    """Keep the first `n` records of a JSONL file."""
    if not path.exists():
        if n and required:
            raise RunDirError(f"{path} is missing but the saved state records {n} candidates")
        return
    lines = path.read_text().splitlines(keepends=True)
    if len(lines) < n and required:
        raise RunDirError(f"{path} has {len(lines)} records but the saved state expects {n}")
    atomic_write_text(path, "".join(lines[:n]))


def refuse_existing(out: Path) -> None:
    """Refuse to start a new search over an existing one."""
    if (out / STATE).exists():
        raise RunDirError(f"{out} already holds a search; pass --resume to continue it or choose another --out")


def saved_config(out: str | os.PathLike) -> dict:
    """The options a search in `out` was started with (its `search.yaml`), minus those a resume may change."""
    path = Path(out) / CONFIG
    if not path.is_file():
        return {}
    try:
        saved = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise RunDirError(f"cannot read {path}: {err}") from err
    if not isinstance(saved, dict):
        raise RunDirError(f"{path} is corrupt: expected a mapping of option: value")
    names = {f.name for f in dataclasses.fields(SearchConfig)}
    return {k: v for k, v in saved.items() if k in names and k not in _MAY_CHANGE_ON_RESUME}


def saved_candidates(out: str | os.PathLike) -> int:
    """How many scored candidates the search saved in `out` holds (0: none, or no readable saved state)."""
    try:
        return int(SearchStore(out).read_state()["history_len"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def is_done(out: str | os.PathLike, generations: int | None = None) -> bool:
    """Whether the search in `out` has finished (at least `generations` generations, when given)."""
    out = Path(out)
    if not ((out / SUMMARY).exists() and (out / STATE).exists() and (out / ARCH).exists()):
        return False
    saved = SearchStore(out).read_state()
    if saved.get("pending") is not None:  # an extended search interrupted inside a generation
        return False
    return generations is None or saved["generation"] >= generations


__all__ = ["ARCH", "HISTORY", "STATE", "SUMMARY", "TIMINGS", "SearchStore", "is_done", "refuse_existing",
           "saved_candidates", "saved_config"]
