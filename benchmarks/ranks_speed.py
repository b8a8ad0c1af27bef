"""Candidates per second of a search on 1 process vs N torchrun ranks (gloo on CPU, 1 thread each), same result.

    python benchmarks/ranks_speed.py --ranks 2 -- --population 10 --elites 2 --iterations 4
    (everything after `--` goes to `tracenas search`; default: the embedded model, --preset quick)

Reads `search/summary.json` of both runs: candidates scored this session / seconds spent in the generations
(model loading and the base pass excluded), and checks that history.jsonl and arch.json are identical.
Each generation's new candidates (population - elites after generation 0) are split over the ranks, so
choose a multiple of the ranks, or the last rank's share waits for the others.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def run(ranks: int, out: Path, search_args: list[str], port: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "tracenas"] if ranks == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks), "--master-port", str(port),
        "-m", "tracenas"]
    cmd = [*launcher, "search", "--out", str(out), "--threads", "1", *search_args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads((out / "search" / "summary.json").read_text())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--port", type=int, default=29561)
    ap.add_argument("search_args", nargs="*", help="after --: options of tracenas search")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        one = run(1, Path(tmp) / "one", args.search_args, args.port)
        many = run(args.ranks, Path(tmp) / "many", args.search_args, args.port)
        same = all((Path(tmp) / "one" / f).read_text() == (Path(tmp) / "many" / f).read_text()
                   for f in ("history.jsonl", "arch.json"))
    rate = {k: s["candidates_this_session"] / s["scoring_seconds_this_session"] for k, s in (("1", one), ("n", many))}
    print(f"1 process: {one['candidates_this_session']} candidates in {one['scoring_seconds_this_session']:.1f} s "
          f"= {rate['1']:.3f} cand/s; {args.ranks} ranks: {many['candidates_this_session']} in "
          f"{many['scoring_seconds_this_session']:.1f} s = {rate['n']:.3f} cand/s; speedup {rate['n'] / rate['1']:.2f}x; "
          f"identical history and arch.json: {same} [1 thread per process, os.cpu_count()={os.cpu_count()}, "
          f"load average {os.getloadavg()[0]:.2f} at the end]")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
