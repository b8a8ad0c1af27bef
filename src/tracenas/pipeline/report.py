"""`report.md`: one page for a `tracenas run` directory, assembled from each stage's own section (search,
evaluation and recovery, bench) and the stage wall times.

    write_report("runs/demo")
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tracenas.bench import report as bench_report
from tracenas.eval import report as eval_report
from tracenas.recover import report as recover_report
from tracenas.search import report as search_report


def write_report(out: str | os.PathLike) -> dict:
    """Write `report.md` for a `tracenas run` directory from whatever stages have finished; returns its data."""
    out = Path(out)
    timings = json.loads((out / "run_timings.json").read_text()) if (out / "run_timings.json").exists() else {}
    lines = [f"# tracenas run report: `{out}`", ""]
    search_lines, data = search_report.section(out, timings.get("search"))
    lines += search_lines
    evals = eval_report.results(out / "eval")
    rec_lines, rec = recover_report.section(out / "recover")
    if any(evals.values()) or rec:
        lines += ["## Quality", "", *eval_report.perplexity_lines(evals), *rec_lines, *eval_report.task_lines(evals)]
    bench_lines, bench = bench_report.section(out / "bench.json")
    lines += bench_lines
    if timings:
        lines += ["## Stage wall times (this directory)", "", *[f"- {k}: {v:.0f} s" for k, v in timings.items()], ""]
    (out / "report.md").write_text("\n".join(lines))
    return {**data, "eval": evals, "recover": rec, "bench": bench}
