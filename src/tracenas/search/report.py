"""The search's section of `report.md`: the architecture found and what the search cost. A strategy adds its own
cost lines through `SearchStrategy.cost_lines`; nothing here names a strategy."""

from __future__ import annotations

import json
from pathlib import Path

from tracenas.arch import ArchFile
from tracenas.search.plots import plot_search
from tracenas.search.registry import strategy_class


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def architecture_lines(arch: dict) -> list[str]:
    base = arch["base_params"]
    lines = ["## Architecture", "",
             f"- model: `{arch['model'].get('spec')}`; strategy `{arch.get('strategy', 'evolution')}`, "
             f"proxy `{arch.get('proxy')}`, score {arch.get('score')}",
             f"- parameters: {arch['params']:,} of {base:,} ({arch['params'] / base:.1%}); budget "
             f"{arch.get('budget'):,}; blocks kept {arch['num_layers_kept']}/{len(arch['layers'])}", "",
             "![architecture](search/arch.png)", "", "![search progress](search/progress.png)", "",
             "| block | kept | q heads | kv heads | MLP width |", "|---:|:---:|---:|---:|---:|"]
    for la in arch["layers"]:
        kept = la["keep"]
        lines.append(f"| {la['index']} | {'yes' if kept else 'no'} | {la['num_heads'] if kept else '–'} | "
                     f"{la['num_kv_heads'] if kept else '–'} | {la['mlp_width'] if kept else '–'} |")
    return lines + [""]


def cost_lines(summary: dict, strategy: str, seconds: float | None) -> list[str]:
    lines = ["## Search cost", "",
             f"- candidates scored: {summary['candidates_scored']} (rejected draws: {summary.get('rejected_draws', 0)})",
             f"- calibration tokens per candidate: {summary['calibration_tokens']:,}",
             f"- wall time: {seconds if seconds is not None else summary.get('wall_seconds_this_session'):.0f} s on "
             f"{summary['device']} ({summary['dtype']}, {summary.get('threads')} "
             f"thread{'' if summary.get('threads') == 1 else 's'})"]
    cost = summary.get("search_cost")
    extra = strategy_class(strategy).cost_lines(cost) if cost else []
    return lines + extra + [""]


def section(run_dir: str | Path, seconds: float | None = None) -> tuple[list[str], dict]:
    """(report lines, data) for the search in `run_dir`; `seconds`: the search's wall time in this run directory."""
    out = Path(run_dir)
    arch = ArchFile.read(out).to_dict() if (out / "arch.json").exists() else None
    summary = _load(out / "search" / "summary.json")
    lines: list[str] = []
    if arch:
        if (out / "search" / "state.json").exists() and not (out / "search" / "arch.png").exists():
            plot_search(out)
        lines += architecture_lines(arch)
    if summary:
        lines += cost_lines(summary, (arch or {}).get("strategy", "evolution"), seconds)
    return lines, {"arch": arch, "search": summary}
