"""Print the strategy comparison of `compare_strategies.py` (markdown), from one or more OUT roots.

    python benchmarks/compare_table.py runs/compare
    python benchmarks/compare_table.py runs/compare runs/compare-gpu --json table.json
    python benchmarks/compare_table.py runs/compare --save benchmarks/results/compare-cpu.jsonl   # keep the figures
    python benchmarks/compare_table.py benchmarks/results/compare-cpu.jsonl --update docs/comparison.md

Reads every finished run directory OUT/b<budget>/s<seed>/<row> (arch.json, search/summary.json and its evals;
`compare_strategies.collect`), so it also shows runs whose results.json was not yet written. One row per
(budget, strategy row, export, base model, device and recovery dtype), over every root given: means over seeds,
with the spread (sample standard deviation, n >= 2) after "±". Columns: parameters, blocks kept, in-domain and out-of-domain perplexity zero-shot and after recovery,
the local task's accuracy after recovery, candidate evaluations, tokens trained during the search and the
search's wall time. Then, per budget, which row wins on zero-shot and on recovered in-domain perplexity,
saying so where the two differ, and with several seeds the winner of each seed. The unpruned model's figures
(OUT/dense) head the table.

A source is a run root or a `.jsonl` file of records that `--save` wrote: one line per finished run (and per dense
model) with the figures above, so the table outlives the run directories (checkpoints are gigabytes; the
records are what docs/comparison.md's tables are printed from, committed under benchmarks/results/). `--save` merges:
a record of the same (model, device, recovery dtype, budget, row, export, seed) is replaced.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from collections.abc import Iterable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_strategies import ROWS, collect, model_label  # noqa: E402

COLUMNS = ("zero_shot", "recovered", "zero_shot_ood", "recovered_ood", "task_recovered")


def runs(root: Path) -> list[dict]:
    """Every finished run under `root`: OUT/b<budget>/s<seed>/<row> (compare_strategies.py), or OUT/<row> with its
    seed in run.yaml (the layout of compare_strategies.sh and of docs/proxy-validation.md's end-to-end tables)."""
    import yaml

    out = []
    # recovered and evaluated (a run still in its search, export or recovery is not in the table yet)
    done = lambda run: all((run / p).is_file() for p in ("arch.json", "search/summary.json",  # noqa: E731
                                                         "eval/recovered/results.json"))
    for run in sorted(root.glob("b*/s*/*")):
        if done(run):
            out.append(collect(run) | dict(budget=run.parent.parent.name[1:], seed=int(run.parent.name[1:]),
                                           row=run.name))
    for run in sorted(root.iterdir()):
        if done(run) and (run / "run.yaml").is_file():
            rec = collect(run)
            seed = yaml.safe_load((run / "run.yaml").read_text()).get("seed", 0)
            out.append(rec | dict(budget=f"{rec['budget'] / json.loads((run / 'arch.json').read_text())['base_params']:.2g}",
                                  seed=int(seed), row=run.name))
    return out
def dense(root: Path) -> dict | None:
    """The unpruned model's figures under `root` (compare_strategies.py's OUT/dense), or None before they exist."""
    d = root / "dense"
    paths = {name: d / name / "results.json" for name in ("in-domain", "ood")}
    if not all(p.is_file() for p in paths.values()):
        return None
    res = {name: json.loads(p.read_text()) for name, p in paths.items()}
    tasks = res["in-domain"].get("tasks") or {}
    task = next(iter(tasks.values()), None)
    model = res["in-domain"]["model"]
    return {"kind": "dense", "model": model_label(model["model_type"], model["params"]), "params": model["params"],
            "ppl": res["in-domain"]["perplexity"]["ppl"], "ppl_ood": res["ood"]["perplexity"]["ppl"],
            "task": task.get("acc") if isinstance(task, dict) else None}


def record_key(rec: dict) -> tuple:
    """What makes a record one measurement: a rerun of the same run replaces it."""
    if rec.get("kind") == "dense":
        return ("dense", rec["model"])
    return ("run", rec.get("model"), rec["device"], rec.get("recover_dtype", "fp32"), rec["budget"], rec["row"],
            rec["export"], rec["seed"])


def load_records(path: Path) -> tuple[list[dict], list[dict]]:
    """The (runs, dense models) of a records file written by `save_records`."""
    recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in recs if r.get("kind") != "dense"], [r for r in recs if r.get("kind") == "dense"]


def keyed(records: Iterable[dict]) -> dict[tuple, dict]:
    """One record per measurement: a later record of the same run replaces an earlier one."""
    return {record_key(r): r for r in records}


def save_records(path: Path, all_runs: list[dict], dense_models: list[dict]) -> int:
    """Merge these runs and dense models into the records file `path` (atomically); returns how many it holds."""
    old = [r for part in load_records(path) for r in part] if path.is_file() else []
    merged = keyed([*old, *dense_models, *({"kind": "run"} | r for r in all_runs)])
    lines = [json.dumps(merged[k], sort_keys=True) for k in sorted(merged, key=lambda k: json.dumps(k))]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return len(lines)


def load(source: Path) -> tuple[list[dict], list[dict]]:
    """The (runs, dense models) of one source: a run root, or a `.jsonl` records file."""
    if source.is_file():
        return load_records(source)
    if not source.is_dir():
        raise SystemExit(f"{source}: neither a run root nor a records file")
    return runs(source), [d] if (d := dense(source)) else []


def stat(values: list) -> tuple[float, float, int]:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return math.nan, math.nan, 0
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else math.nan), len(vals)


def fmt(values: list, digits: int = 2) -> str:
    mean, sd, n = stat(values)
    if n == 0:
        return "–"
    return f"{mean:,.{digits}f}" + (f" ± {sd:,.{digits}f}" if n > 1 and sd > 0 else "")  # no "± 0" for equal counts


def table(all_runs: list[dict], dense_models: list[dict] = ()) -> tuple[str, list[dict]]:
    """Replicates are the runs of one (budget, row, export, model, device), from any of the roots."""
    groups: dict[tuple, list[dict]] = {}
    order = {name: i for i, name in enumerate(ROWS)}
    for r in all_runs:  # the device label carries the model and the recovery's compute dtype: another protocol
        device = f"{r.get('model', '?')}, {r['device']}, recovery {r.get('recover_dtype', 'fp32')}"
        groups.setdefault((r["budget"], r["row"], r["export"], device), []).append(r)
    lines = []
    for d in {d["model"]: d for d in dense_models}.values():
        lines.append(f"Dense {d['model']} (unpruned): PPL {d['ppl']:.2f} in "
                     f"domain, {d['ppl_ood']:.2f} out of domain" + (f", task acc {d['task']:.3f}" if d["task"] is not None
                                                                    else "") + ".")
    rows = []
    head = ("| budget | row | export | seeds | params | blocks | PPL zero-shot | PPL recovered | OOD zero-shot | "
            "OOD recovered | task acc (recovered) | candidates | tokens trained in search | search s | device |")
    for key in sorted(groups, key=lambda k: (k[0], k[3], order.get(k[1], 99), k[2])):
        rs = groups[key]
        budget, row, export, device = key
        if not rows or (rows[-1]["budget"], rows[-1]["device"]) != (budget, device):
            lines += ["", f"**budget {float(budget):.0%}, {device}**", "", head, "|" + "---|" * 2 + "---|" * 2
                      + "---:|" * 11]
        summary = {"budget": budget, "device": device, "row": row, "export": export,
                   "seeds": sorted(r["seed"] for r in rs), **{c: stat([r[c] for r in rs])[0] for c in COLUMNS},
                   "per_seed": {r["seed"]: {c: r[c] for c in COLUMNS} for r in rs}}
        rows.append(summary)
        lines.append(f"| {float(budget):.0%} | {row} | {export} | {len(rs)} | "
                     f"{statistics.fmean(r['params'] for r in rs) / 1e6:.2f}M | "
                     f"{fmt([r['blocks_kept'] for r in rs], 1)}/{rs[0]['blocks']} | {fmt([r['zero_shot'] for r in rs], 1)} | "
                     f"{fmt([r['recovered'] for r in rs])} | {fmt([r['zero_shot_ood'] for r in rs], 1)} | "
                     f"{fmt([r['recovered_ood'] for r in rs])} | {fmt([r['task_recovered'] for r in rs], 3)} | "
                     f"{fmt([r['candidate_evaluations'] for r in rs], 0)} | {fmt([r['search_tokens_trained'] for r in rs], 0)} | "
                     f"{fmt([r['search_wall_s'] for r in rs], 0)} | {device} |")
    for budget, device in sorted({(r["budget"], r["device"]) for r in rows}):
        # the search strategies compete on plain recovery; a -distill row is another recovery of a row's model
        these = [r for r in rows if (r["budget"], r["device"]) == (budget, device) and not r["row"].endswith("-distill")]
        best = {c: min((r for r in these if math.isfinite(r[c])), key=lambda r: r[c], default=None)
                for c in ("zero_shot", "recovered", "recovered_ood")}
        if best["recovered"] is None or best["zero_shot"] is None:
            continue
        same = best["zero_shot"]["row"] == best["recovered"]["row"]
        unequal = len({tuple(r["seeds"]) for r in these}) > 1
        lines += ["", f"{float(budget):.0%} on {device}: best zero-shot `{best['zero_shot']['row']}`, best recovered "
                  f"`{best['recovered']['row']}`" + ("" if same else " (the winners differ)")
                  + (f", best recovered out of domain `{best['recovered_ood']['row']}`" if best["recovered_ood"] else "")
                  + (" (means over unequal sets of seeds: see the seeds column)" if unequal else "") + "."]
        lines += per_seed_winners(these)
        for d in (r for r in rows if (r["budget"], r["device"]) == (budget, device) and r["row"].endswith("-distill")):
            plain = next((r for r in these if (r["row"], r["export"]) == (d["row"].removesuffix("-distill"),
                                                                        d["export"])), None)
            common = sorted(set(d["per_seed"]) & set(plain["per_seed"])) if plain is not None else []
            if common:  # paired: the same seeds' models, recovered both ways
                mean = lambda r, c, seeds=tuple(common): statistics.fmean(r["per_seed"][s][c] for s in seeds)  # noqa: E731
                wins = sum(d["per_seed"][s]["recovered_ood"] < plain["per_seed"][s]["recovered_ood"] for s in common)
                lines.append(f"`{d['row']}` against plain recovery of the same models (seeds "
                             f"{', '.join(map(str, common))}): in domain {mean(plain, 'recovered'):.2f} -> "
                             f"{mean(d, 'recovered'):.2f}, out of domain {mean(plain, 'recovered_ood'):.2f} -> "
                             f"{mean(d, 'recovered_ood'):.2f} (better out of domain on {wins} of {len(common)} seeds).")
                lines += ["", *paired_table(plain, d, common)]
    return "\n".join(lines), rows


def paired_table(plain: dict, other: dict, seeds: list[int]) -> list[str]:
    """Per seed, the same model recovered two ways (plain, and `other`: distilled): the lines of a markdown table."""
    cols = (("recovered", "PPL", 2), ("recovered_ood", "OOD", 2), ("task_recovered", "task acc", 3))
    out = ["| seed | " + " | ".join(f"{name} plain | {name} `{other['row']}`" for _, name, _ in cols) + " |",
           "|---:|" + "---:|" * (2 * len(cols))]
    for s in seeds:
        cells = []
        for c, _, digits in cols:
            a, b = plain["per_seed"][s][c], other["per_seed"][s][c]
            cells += [f"{a:,.{digits}f}" if a is not None else "–", f"{b:,.{digits}f}" if b is not None else "–"]
        out.append(f"| {s} | " + " | ".join(cells) + " |")
    return out


def per_seed_winners(rows: list[dict]) -> list[str]:
    """Where several seeds ran, the best recovered row of each seed among the rows that ran it (a mean can hide a
    winner that won once by a lot)."""
    seeds = sorted({s for r in rows for s in r["per_seed"]})
    if len(seeds) < 2:
        return []
    parts = []
    for c, what in (("recovered", "in domain"), ("recovered_ood", "out of domain")):
        best = []
        for s in seeds:
            scored = [(r["per_seed"][s][c], r["row"]) for r in rows
                      if s in r["per_seed"] and r["per_seed"][s][c] is not None]
            if scored:
                best.append(f"s{s} `{min(scored)[1]}` ({len(scored)} row{'s' if len(scored) > 1 else ''})")
        parts.append(f"best recovered {what} per seed: " + ", ".join(best))
    return ["; ".join(parts).capitalize() + "."]


def update(path: Path, marker: str, text: str) -> None:
    """Replace what lies between `<!-- marker -->` and `<!-- /marker -->` in `path` (docs/comparison.md) by `text`."""
    doc = path.read_text()
    start, end = f"<!-- {marker} -->", f"<!-- /{marker} -->"
    if doc.count(start) != 1 or doc.count(end) != 1 or doc.index(start) > doc.index(end):
        raise SystemExit(f"{path}: expected one {start} ... {end} block")
    head, rest = doc.split(start)
    path.write_text(head + start + "\n" + text.strip("\n") + "\n" + end + rest.split(end, 1)[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sources", nargs="+", type=Path, metavar="SOURCE",
                    help="run roots of compare_strategies.py, or .jsonl records files written by --save")
    ap.add_argument("--json", type=Path, help="also write the summary rows here")
    ap.add_argument("--save", type=Path, metavar="FILE.jsonl",
                    help="merge every run and dense model read into this records file (the table's raw figures)")
    ap.add_argument("--update", nargs="+", type=Path, default=[], metavar="FILE",
                    help="also put the table into these markdown files, between <!-- MARKER --> and <!-- /MARKER -->")
    ap.add_argument("--marker", default="cpu-table", help="the block that --update replaces (default: cpu-table)")
    args = ap.parse_args()
    found = keyed(rec for source in args.sources for part in load(source) for rec in part)  # later sources win
    all_runs = [r for k, r in found.items() if k[0] == "run"]
    dense_models = [d for k, d in found.items() if k[0] == "dense"]
    if args.save:
        print(f"{args.save}: {save_records(args.save, all_runs, dense_models)} records", file=sys.stderr)
    text, rows = table(all_runs, dense_models)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    for path in args.update:
        update(path, args.marker, text)


if __name__ == "__main__":
    main()
