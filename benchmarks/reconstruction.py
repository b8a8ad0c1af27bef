"""Does re-solving the kept weights help? Mask-only vs reconstructed exports, zero-shot and after recovery.

    OMP_NUM_THREADS=1 python benchmarks/reconstruction.py runs/reconstruction --jobs 2 --recover best

For each budget (default 60 % and 80 %) and architecture (the quick preset's `kl` search and uniform
pruning), it exports the same architecture five ways: mask only (today's cut), and reconstructed with
dense or sequential inputs, each with Wanda or OBS selection. Each export is evaluated on the held-out
split (the `quick` eval preset, the protocol of docs/reconstruction.md's tables); `--recover` then runs the quick
recovery (100k tokens, same data order and LR for every model) on `all` exports or on the mask-only one
and the best reconstructed one by zero-shot perplexity (`best`), and evaluates again. It also times the
sparsity-level database build. Every step is skipped when its outputs exist (rerun to resume or to
print the table); commands run as subprocesses at `--threads` threads each, `--jobs` at a time.
Writes OUT/reconstruction.json and prints the markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

VARIANTS = {  # name -> export flags
    "mask": [],
    "dense-wanda": ["--reconstruct", "dense", "--importance", "wanda"],
    "dense-obs": ["--reconstruct", "dense", "--importance", "obs"],
    "sequential-wanda": ["--reconstruct", "sequential", "--importance", "wanda"],
    "sequential-obs": ["--reconstruct", "sequential", "--importance", "obs"],
}
ARCHS = {"kl": ["--preset", "quick"], "uniform": ["--preset", "quick", "--strategy", "uniform"]}


def tracenas(args: list[str], log: Path, threads: int) -> float:
    """Run `python -m tracenas ARGS` (output to `log`); returns wall seconds."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    t = time.perf_counter()
    with open(log, "a") as f:
        proc = subprocess.run([sys.executable, "-m", "tracenas", *args, "--threads", str(threads)], env=env,
                              stdout=f, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"tracenas {' '.join(args)} failed (exit {proc.returncode}); see {log}")
    return time.perf_counter() - t


def ppl(eval_dir: Path) -> float:
    p = eval_dir / "results.json"
    return json.loads(p.read_text())["perplexity"]["ppl"] if p.is_file() else math.nan


def timed(record: dict, key: str, fn) -> None:
    if key not in record:
        record[key] = round(fn(), 1)


class Bench:
    def __init__(self, root: Path, threads: int, jobs: int):
        self.root, self.threads, self.jobs = root, threads, jobs
        self.path = root / "reconstruction.json"
        self.data = json.loads(self.path.read_text()) if self.path.is_file() else {"runs": {}}

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, sort_keys=True))
        os.replace(tmp, self.path)

    def run(self, args, log) -> float:
        return tracenas(args, log, self.threads)

    def search(self, arch: str, budget: str) -> Path:
        run = self.root / f"{arch}-{budget}"
        if not (run / "arch.json").is_file():
            self.run(["search", *ARCHS[arch], "--budget", budget, "--out", str(run)], self.root / f"{run.name}.log")
        return run

    def export_and_eval(self, run: Path, variant: str) -> None:
        rec = self.data["runs"].setdefault(f"{run.name}/{variant}", {})
        model = run / variant / "model"
        log = run / f"{variant}.log"
        if not (model / "config.json").is_file():
            rec["export_s"] = round(self.run(["export", str(run), "--out", str(model), *VARIANTS[variant]], log), 1)
        rec_file = model / "reconstruction.json"
        if rec_file.is_file():
            rec["calibration_error"] = json.loads(rec_file.read_text())["mean"]
        if not (run / variant / "eval-zero" / "results.json").is_file():
            self.run(["eval", str(model), "--preset", "quick", "--out", str(run / variant / "eval-zero")], log)
        rec["zero_shot"] = ppl(run / variant / "eval-zero")

    def recover_and_eval(self, run: Path, variant: str) -> None:
        rec = self.data["runs"][f"{run.name}/{variant}"]
        out = run / variant / "recover"
        log = run / f"{variant}.log"
        if not (out / "model" / "config.json").is_file():
            rec["recover_s"] = round(self.run(["recover", str(run / variant / "model"), "--preset", "quick",
                                               "--out", str(out)] + (["--resume"] if out.exists() else []), log), 1)
        if not (run / variant / "eval-recovered" / "results.json").is_file():
            self.run(["eval", str(out / "model"), "--preset", "quick", "--out", str(run / variant / "eval-recovered")],
                     log)
        rec["recovered"] = ppl(run / variant / "eval-recovered")

    def parallel(self, fn, items) -> None:
        with ThreadPoolExecutor(self.jobs) as pool:
            for _ in pool.map(lambda item: fn(*item), items):
                self.save()
        self.save()


def table(data: dict, budgets: list[str]) -> str:
    lines = ["| budget | architecture | export | calibration error o_proj / down_proj | export s | PPL zero-shot | "
             "PPL recovered |", "|---|---|---|---:|---:|---:|---:|"]
    for budget in budgets:
        for arch in ARCHS:
            for variant in VARIANTS:
                r = data["runs"].get(f"{arch}-{budget}/{variant}")
                if r is None:
                    continue
                err = r.get("calibration_error")
                err_s = (f"{err['o_proj_mask']:.3f}→{err['o_proj_reconstructed']:.3f} / "
                         f"{err['down_proj_mask']:.3f}→{err['down_proj_reconstructed']:.3f}") if err else "–"
                rec = r.get("recovered", math.nan)
                lines.append(f"| {float(budget):.0%} | {arch} | {variant} | {err_s} | {r.get('export_s', math.nan):.0f} | "
                             f"{r.get('zero_shot', math.nan):,.1f} | {'–' if math.isnan(rec) else f'{rec:.2f}'} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--budgets", nargs="+", default=["0.6", "0.8"])
    ap.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--recover", choices=["none", "best", "all"], default="best")
    ap.add_argument("--database", action="store_true", help="also time `tracenas database build` (obs, 11 levels)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--table-only", action="store_true", help="print the table from OUT/reconstruction.json")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    bench = Bench(args.out, args.threads, args.jobs)
    if not args.table_only:
        for b in args.budgets:  # budget by budget: the first budget's table is complete before the next starts
            runs = [bench.search(arch, b) for arch in args.archs]
            bench.parallel(bench.export_and_eval, [(r, v) for r in runs for v in args.variants])
            todo = []
            for r in runs:
                if args.recover == "all":
                    todo += [(r, v) for v in args.variants]
                elif args.recover == "best":
                    scored = {v: bench.data["runs"][f"{r.name}/{v}"]["zero_shot"] for v in args.variants if v != "mask"}
                    todo += [(r, "mask")] + ([(r, min(scored, key=scored.get))] if scored else [])
            bench.parallel(bench.recover_and_eval, todo)
        if args.database:
            db = args.out / "database"
            timed(bench.data, "database_build_s",
                  lambda: bench.run(["database", "build", str(db)], args.out / "database.log"))
            bench.data["database_bytes"] = sum(f.stat().st_size for f in db.iterdir() if f.is_file())
            bench.save()
    print(table(bench.data, args.budgets))
    if "database_build_s" in bench.data:
        print(f"\ndatabase build: {bench.data['database_build_s']:.0f} s, {bench.data['database_bytes'] / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
