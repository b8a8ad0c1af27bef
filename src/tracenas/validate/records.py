"""candidates.jsonl, the append-only record of the study (resume = skip what it holds): write, read, index."""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from tracenas.arch import Genome

log = logging.getLogger("tracenas.validate")  # one logger for the package: log lines name it as before the split


def append_record(path: Path, record: dict) -> None:
    """Append one JSON line with a single write (O_APPEND): concurrent ranks never interleave lines."""
    data = (json.dumps(record, default=_json_default) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, data)
        if written != len(data):
            raise OSError(f"short write to {path}")
        os.fsync(fd)
    finally:
        os.close(fd)


def _json_default(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    raise TypeError(type(x))


def read_records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for n, line in enumerate(path.read_text().splitlines()):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("%s line %d is not valid JSON (a write cut short?); it will be recomputed", path.name, n + 1)
    return out


def repair_tail(path: Path) -> None:
    """Drop a torn last line (no trailing newline) so that the next append starts a fresh line."""
    if not path.exists() or path.stat().st_size == 0:
        return
    text = path.read_bytes()
    if not text.endswith(b"\n"):
        cut = text.rfind(b"\n") + 1
        log.warning("dropping a torn last record of %s (%d bytes)", path.name, len(text) - cut)
        with open(path, "r+b") as fh:
            fh.truncate(cut)


class Records:
    """Index of candidates.jsonl: what is done, and the merged values."""

    def __init__(self, records: list[dict], candidates: list[tuple[Genome, str]]):
        keys = [g.key() for g, _ in candidates]
        self.truth: dict[int, dict] = {}
        self.proxy: dict[tuple[int, int], dict] = defaultdict(lambda: {"scores": {}, "seconds": {}})
        self.sweep: dict[tuple[int, int], dict] = {}
        self.base: dict | None = None
        for r in records:
            kind = r.get("type")
            if kind == "base":
                self.base = r
                continue
            i = r.get("index")
            if not isinstance(i, int) or i >= len(keys) or r.get("key") != keys[i]:
                continue  # a candidate of another sample: ignore
            if kind == "truth":
                self.truth[i] = r
            elif kind == "proxy":
                p = self.proxy[(i, r["seed"])]
                p["scores"].update(r["scores"])
                p["seconds"].update(r.get("seconds", {}))
            elif kind == "sweep":
                self.sweep[(i, r["seed"])] = r

    def missing_proxies(self, i: int, seed: int, names: list[str]) -> list[str]:
        have = self.proxy[(i, seed)]["scores"] if (i, seed) in self.proxy else {}
        return [n for n in names if n not in have]
