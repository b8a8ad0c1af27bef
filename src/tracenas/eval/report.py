"""The evaluations' part of `report.md`: held-out perplexity of base / pruned / recovered, then task accuracy."""

from __future__ import annotations

import json
from pathlib import Path

MODELS = ("base", "pruned", "recovered")


def _fmt_ppl(res: dict | None) -> str:
    if not res or "perplexity" not in res:
        return "–"
    return f"{res['perplexity']['ppl']:.2f}"


def results(eval_dir: str | Path) -> dict[str, dict | None]:
    """Each model's results.json under `eval_dir` (None where it has not run)."""
    paths = {name: Path(eval_dir) / name / "results.json" for name in MODELS}
    return {name: json.loads(p.read_text()) if p.exists() else None for name, p in paths.items()}


def perplexity_lines(evals: dict[str, dict | None]) -> list[str]:
    return ["| model | perplexity (held-out split) |", "|---|---:|",
            *[f"| {name} | {_fmt_ppl(evals[name])} |" for name in MODELS], ""]


def task_lines(evals: dict[str, dict | None]) -> list[str]:
    rows = []
    for name, res in evals.items():
        for task, vals in ((res or {}).get("tasks") or {}).items():
            acc = vals.get("acc_norm", vals.get("acc")) if isinstance(vals, dict) else vals
            if isinstance(acc, (int, float)):
                rows.append(f"| {name} | {task} | {acc:.4f} |")
    return ["| model | task | accuracy |", "|---|---|---:|", *rows, ""] if rows else []
