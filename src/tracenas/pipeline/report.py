"""`report.md`: one page drawn from a `tracenas run` directory (the search's plots come from `tracenas.search.plots`).

    write_report("runs/demo")
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import matplotlib

from tracenas.arch import ArchFile
from tracenas.search.plots import plot_search

matplotlib.use("Agg")


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _fmt_ppl(res: dict | None) -> str:
    if not res or "perplexity" not in res:
        return "–"
    return f"{res['perplexity']['ppl']:.2f}"


def write_report(out: str | os.PathLike) -> dict:
    """Write `report.md` for a `tracenas run` directory from whatever stages have finished."""
    out = Path(out)
    arch = ArchFile.read(out).to_dict() if (out / "arch.json").exists() else None
    summary = _load(out / "search" / "summary.json")
    evals = {name: _load(out / "eval" / name / "results.json") for name in ("base", "pruned", "recovered")}
    rec = _load(out / "recover" / "recover.json")
    bench = _load(out / "bench.json")
    timings = _load(out / "run_timings.json") or {}
    lines = [f"# tracenas run report: `{out}`", ""]
    data: dict = {"arch": arch, "search": summary, "eval": evals, "recover": rec, "bench": bench}
    if arch:
        if (out / "search" / "state.json").exists() and not (out / "search" / "arch.png").exists():
            plot_search(out)
        base = arch["base_params"]
        lines += ["## Architecture", "",
                  f"- model: `{arch['model'].get('spec')}`; strategy `{arch.get('strategy', 'evolution')}`, "
                  f"proxy `{arch.get('proxy')}`, score {arch.get('score')}",
                  f"- parameters: {arch['params']:,} of {base:,} ({arch['params'] / base:.1%}); budget "
                  f"{arch.get('budget'):,}; blocks kept {arch['num_layers_kept']}/{len(arch['layers'])}", "",
                  "![architecture](search/arch.png)", "", "![search progress](search/progress.png)", "",
                  "| block | kept | q heads | kv heads | MLP width |", "|---:|:---:|---:|---:|---:|"]
        for la in arch["layers"]:
            lines.append(f"| {la['index']} | {'yes' if la['keep'] else 'no'} | "
                         f"{la['num_heads'] if la['keep'] else '–'} | {la['num_kv_heads'] if la['keep'] else '–'} | "
                         f"{la['mlp_width'] if la['keep'] else '–'} |")
        lines.append("")
    if summary:
        lines += ["## Search cost", "",
                  f"- candidates scored: {summary['candidates_scored']} "
                  f"(rejected draws: {summary.get('rejected_draws', 0)})",
                  f"- calibration tokens per candidate: {summary['calibration_tokens']:,}",
                  f"- wall time: {timings.get('search', summary.get('wall_seconds_this_session')):.0f} s on "
                  f"{summary['device']} ({summary['dtype']}, {summary.get('threads')} "
                  f"thread{'' if summary.get('threads') == 1 else 's'})", ""]
        cost = summary.get("search_cost")
        if cost and "rounds" in cost:  # tyr: supernets built per round, no training
            lines[-1:] = [f"- fitness evaluations: {cost['candidate_evaluations']:,} (each assembles a candidate "
                          f"from its round's supernet and scores it by KL to the base model); scoring: "
                          f"{cost['eval_tokens']:,} tokens",
                          f"- supernets: {cost['rounds']} rounds, {cost['supernet_bytes'] / 1e6:,.1f} MB on disk, "
                          f"built this session in {cost['supernet_seconds_this_session']:.0f} s",
                          f"- search wall time over all sessions: {cost['wall_seconds']:.0f} s (candidates "
                          f"{cost['candidate_seconds']:.0f} s)", ""]
        elif cost:  # a training-aware search (darwinlm) is charged for its training too
            lines[-1:] = [f"- fitness evaluations: {cost['candidate_evaluations']:,} (each fine-tunes a sliced "
                          f"candidate, then scores it by KL to the base model)",
                          f"- fine-tuning: {cost['finetune_tokens']:,} tokens in {cost['finetune_steps']:,} "
                          f"AdamW steps; scoring: {cost['eval_tokens']:,} tokens",
                          f"- search wall time over all sessions: {cost['wall_seconds']:.0f} s (candidates "
                          f"{cost['candidate_seconds']:.0f} s; database built this session in "
                          f"{cost['database_seconds_this_session']:.0f} s)", ""]
    if any(evals.values()) or rec:
        lines += ["## Quality", "", "| model | perplexity (held-out split) |", "|---|---:|"]
        for name in ("base", "pruned", "recovered"):
            lines.append(f"| {name} | {_fmt_ppl(evals[name])} |")
        lines.append("")
        if rec:
            how = f" (distilled from {rec['teacher']})" if rec.get("teacher") else ""
            lines += [f"Recovery{how}: {rec['steps']} steps, {rec['tokens_seen']:,} tokens, final training loss "
                      f"{rec['final_loss']:.3f}, {rec['wall_time_s']:.0f} s.", "", "![loss](recover/loss.png)", ""]
        task_rows = []
        for name, res in evals.items():
            for task, vals in ((res or {}).get("tasks") or {}).items():
                acc = vals.get("acc_norm", vals.get("acc")) if isinstance(vals, dict) else vals
                if isinstance(acc, (int, float)):
                    task_rows.append(f"| {name} | {task} | {acc:.4f} |")
        if task_rows:
            lines += ["| model | task | accuracy |", "|---|---|---:|", *task_rows, ""]
    if bench:
        lines += ["## Speed", "", f"Device: {bench.get('device')}; prompt {bench['config'].get('prompt_len')} tokens, "
                  f"{bench['config'].get('gen_len')} generated, median of {bench['config'].get('trials')} trials.", "",
                  "| model | TTFT (ms) | per token (ms) | tokens/s | peak MB |", "|---|---:|---:|---:|---:|"]
        for name, m in bench["models"].items():
            peak = m.get("peak_mem_mb")
            lines.append(f"| {name} | {m['ttft_ms']:.1f} | {m['tpot_ms']:.2f} | {m['throughput_tok_s']:.1f} | "
                         f"{'–' if peak is None else f'{peak:.0f}'} |")
        if bench.get("speedup"):
            s = bench["speedup"]
            lines += ["", f"Speedup: prefill {s['prefill']:.2f}x, decode {s['decode']:.2f}x, "
                      f"throughput {s['throughput']:.2f}x."]
        lines.append("")
    if timings:
        lines += ["## Stage wall times (this directory)", "",
                  *[f"- {k}: {v:.0f} s" for k, v in timings.items()], ""]
    (out / "report.md").write_text("\n".join(lines))
    return data
