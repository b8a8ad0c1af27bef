"""The bench's section of `report.md`: latency, throughput and memory of each model, and the speedup."""

from __future__ import annotations

import json
from pathlib import Path


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
        s = bench["speedup"]
        lines += ["", f"Speedup: prefill {s['prefill']:.2f}x, decode {s['decode']:.2f}x, throughput {s['throughput']:.2f}x."]
    return lines + [""], bench
