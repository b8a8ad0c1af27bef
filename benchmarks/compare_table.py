"""Print the table of `compare_strategies.sh` for one or more OUT_ROOTs (replicates, e.g. seeds).

    python benchmarks/compare_table.py runs/compare runs/compare-seed1

One row per run directory whose search has finished (a subdirectory with run.yaml, arch.json and
search/summary.json; stages still running show nan), then, with several roots,
the mean recovered perplexity per (strategy, proxy) over the roots that have it.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import yaml


def ppl(run: Path, name: str) -> float:
    p = run / "eval" / name / "results.json"
    return json.loads(p.read_text())["perplexity"]["ppl"] if p.exists() else float("nan")


def rows(root: Path) -> list[dict]:
    out = []
    done = ("run.yaml", "arch.json", "search/summary.json")
    for run in sorted(p for p in root.iterdir() if all((p / f).exists() for f in done)):
        cfg = yaml.safe_load((run / "run.yaml").read_text())
        arch = json.loads((run / "arch.json").read_text())
        summary = json.loads((run / "search" / "summary.json").read_text())
        proxy = arch["proxy"] if cfg["strategy"] != "uniform" else "-"
        out.append(dict(run=run.name, strategy=cfg["strategy"], proxy=proxy, seed=cfg["seed"],
                        params=arch["params"], kept=arch["num_layers_kept"], blocks=len(arch["layers"]),
                        scored=summary["candidates_scored"], search_s=summary.get("wall_seconds_this_session"),
                        zero_shot=ppl(run, "pruned"), recovered=ppl(run, "recovered"), base=ppl(run, "base")))
    return out


def main(roots: list[str]) -> None:
    all_rows = []
    for root in map(Path, roots):
        rs = rows(root)
        all_rows += rs
        base = [r["base"] for r in rs if r["base"] == r["base"]]
        print(f"\n{root}" + (f" (base model perplexity {base[0]:.2f})" if base else ""))
        print("| run | strategy | proxy | seed | params | blocks kept | candidates | PPL zero-shot | PPL recovered |")
        print("|---|---|---|---:|---:|---:|---:|---:|---:|")
        for r in rs:
            print(f"| {r['run']} | {r['strategy']} | {r['proxy']} | {r['seed']} | {r['params'] / 1e6:.2f}M | "
                  f"{r['kept']}/{r['blocks']} | {r['scored']} | {r['zero_shot']:,.1f} | {r['recovered']:.2f} |")
    if len(roots) > 1:
        groups: dict[tuple, list[float]] = {}
        for r in all_rows:
            groups.setdefault((r["strategy"], r["proxy"]), []).append(r["recovered"])
        print("\n| strategy | proxy | replicates | PPL recovered (each) | mean |")
        print("|---|---|---:|---|---:|")
        for (strategy, proxy), v in sorted(groups.items(), key=lambda kv: statistics.fmean(kv[1])):
            print(f"| {strategy} | {proxy} | {len(v)} | {', '.join(f'{x:.2f}' for x in v)} | {statistics.fmean(v):.2f} |")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
