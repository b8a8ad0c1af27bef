"""The bench's section of `report.md`: latency, throughput and memory of each model, and the speedups its trials
support (torch-free: the CLI and the report print them the same way)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# each speedup and the per-trial times it is a ratio of (base over pruned)
SPEEDUP_METRICS = {"prefill": "ttft_ms", "decode": "tpot_ms", "throughput": "total_ms"}


def format_speedup(s: dict[str, Any]) -> str:
    """`prefill 1.90x (paired trials 1.75-2.02x), ...`; a figure its trials do not support is not printed."""
    parts = []
    for name in SPEEDUP_METRICS:
        lo, _, hi = s["paired"][name] if s.get("paired", {}).get(name) else (None, None, None)
        trials = f" (paired trials {lo:.2f}-{hi:.2f}x)" if lo is not None else ""
        if s.get("supported", {}).get(name, True):
            parts.append(f"{name} {s[name]:.2f}x{trials}")
        else:
            parts.append(f"{name} not supported by the trials{trials}")
    return ", ".join(parts)


def section(bench_json: str | Path) -> tuple[list[str], dict | None]:
    """(report lines, bench.json's content) for the benchmark written to `bench_json`."""
    path = Path(bench_json)
    bench = json.loads(path.read_text()) if path.exists() else None
    if not bench:
        return [], bench
    c = bench["config"]
    lines = ["## Speed", "", f"Device: {bench.get('device')}; prompt {c.get('prompt_len')} tokens, "
             f"{c.get('gen_len')} generated, median of {c.get('trials')} trials.", "",
             "| model | TTFT (ms) | per token (ms) | tokens/s | peak MB |", "|---|---:|---:|---:|---:|"]
    for name, m in bench["models"].items():
        peak = m.get("peak_mem_mb")
        lines.append(f"| {name} | {m['ttft_ms']:.1f} | {m['tpot_ms']:.2f} | {m['throughput_tok_s']:.1f} | "
                     f"{'–' if peak is None else f'{peak:.0f}'} |")
    if bench.get("speedup"):
        lines += ["", f"Speedup (base and pruned timed interleaved): {format_speedup(bench['speedup'])}."]
    return lines + [""], bench
