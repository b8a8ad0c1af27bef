"""Reports of the study from candidates.jsonl: table.md, results.json, scatter.png; sweep.json/.md/.png."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

from tracenas.runtime.config import atomic_write_json, atomic_write_text
from tracenas.validate.config import FAMILIES, ValidateConfig, proxy_label
from tracenas.validate.records import Records, read_records
from tracenas.validate.stats import _score_value, summarize, summarize_sweep


def _fmt(ms: dict) -> str:
    m, s = ms["mean"], ms["std"]
    if m is None or math.isnan(m):
        return "–"
    n = sum(1 for x in ms.get("per_seed", []) if x is not None and not math.isnan(x))
    return f"{m:.2f}" if n <= 1 else f"{m:.2f} ± {s:.2f}"  # no spread to show for one seed


def format_table(summary: dict, title: str = "") -> str:
    """Markdown like Table 1: SP / KT per ground truth, best bold, second underlined (by mean)."""
    steps = [str(s) for s in summary["steps"]]
    names = list(summary["proxies"])
    cols = [(s, k) for s in steps for k in ("spearman", "kendall")]
    best: dict[tuple, list[float]] = {}
    for col in cols:
        vals = sorted({round(summary["proxies"][n]["vs"][col[0]][col[1]]["mean"], 2) for n in names
                       if not math.isnan(summary["proxies"][n]["vs"][col[0]][col[1]]["mean"])}, reverse=True)
        best[col] = vals[:2]
    head = "| Proxy | " + " | ".join(f"{'PPL zero-shot' if s == '0' else f'PPL @ {s} steps'} {'SP' if k == 'spearman' else 'KT'}"
                                     for s, k in cols) + " | pick rank | s / cand |"
    lines = [title, "", head, "|" + "---|" * (len(cols) + 3)] if title else [head, "|" + "---|" * (len(cols) + 3)]
    for n in names:
        e = summary["proxies"][n]
        cells = []
        for col in cols:
            ms = e["vs"][col[0]][col[1]]
            text = _fmt(ms)
            r = round(ms["mean"], 2) if not math.isnan(ms["mean"]) else None
            if r is not None and best[col] and r == best[col][0]:
                text = f"**{text}**"
            elif r is not None and len(best[col]) > 1 and r == best[col][1]:
                text = f"<u>{text}</u>"
            cells.append(text)
        pick = e["pick_rank"]["mean"]
        cost = e["cost_seconds"]
        lines.append(f"| {e['label']} (`{n}`) | " + " | ".join(cells) +
                     f" | {'–' if math.isnan(pick) else f'{pick:.1f}'} | {'–' if cost is None else f'{cost:.2f}'} |")
    gt = summary["ground_truth"]
    lines += ["", "Ground truth vs itself (Spearman / Kendall of perplexity at each budget vs the longest recovery):", "",
              "| recovery steps | median PPL | SP vs final | KT vs final |", "|---|---|---|---|"]
    for s in steps:
        c = gt[s]["vs_final"]
        med = gt[s]["median_ppl"]
        lines.append(f"| {s} | {'–' if med is None else f'{med:.1f}'} | {c['spearman']:.2f} | {c['kendall']:.2f} |")
    return "\n".join(lines) + "\n"


def plot_scatter(cfg: ValidateConfig, candidates, recs: Records, names: list[str], summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    final = str(max(cfg.steps))
    done = [i for i in range(len(candidates)) if i in recs.truth]
    cols = 4
    rows = max(1, math.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.3 * rows), squeeze=False)
    colors = {"width": "tab:blue", "depth": "tab:red", "mixed": "tab:green"}
    for ax, n in zip(axes.flat, names):
        for fam in FAMILIES:
            xs, ys = [], []
            for i in done:
                if candidates[i][1] != fam:
                    continue
                vals = [_score_value(recs.proxy[(i, s)]["scores"][n]) for s in range(cfg.seeds)
                        if (i, s) in recs.proxy and n in recs.proxy[(i, s)]["scores"]]
                vals = [v for v in vals if math.isfinite(v)]
                if vals:
                    xs.append(float(np.mean(vals)))
                    ys.append(recs.truth[i]["ppl"][final])
            ax.scatter(xs, ys, s=14, alpha=0.8, color=colors[fam], label=fam)
        e = summary["proxies"][n]["vs"][final]
        ax.set_yscale("log")
        ax.set_title(f"{proxy_label(n)}\nSP {_fmt(e['spearman'])}  KT {_fmt(e['kendall'])}", fontsize=8)
        ax.set_xlabel(f"{n} (mean over seeds)", fontsize=8)
        ax.set_ylabel(f"PPL after {final} steps", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def format_sweep(sweep: dict, final: int) -> str:
    names = {"N": "calibration sequences N", "CL": "context length CL", "r": "LoRA rank r"}
    lines = []
    for cat in ("N", "CL", "r"):
        s = sweep[cat]
        lines += [f"### {names[cat]} (reference {s['reference']})", "",
                  (f"| {cat} | KT vs reference | SP vs PPL@{final} | KT vs PPL@{final} | SP vs PPL zero-shot | "
                   "KT vs PPL zero-shot |"), "|---|---|---|---|---|---|"]
        for v, row in s["rows"].items():
            lines.append(f"| {v} | {_fmt(row['tau_vs_ref'])} | {_fmt(row['spearman_final'])} | "
                         f"{_fmt(row['kendall_final'])} | {_fmt(row['spearman_zero_shot'])} | "
                         f"{_fmt(row['kendall_zero_shot'])} |")
        lines.append("")
    return "\n".join(lines)


def plot_sweep(sweep: dict, final: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, cat in zip(axes, ("N", "CL", "r")):
        rows = sweep[cat]["rows"]
        xs = [int(v) for v in rows]
        for key, label, style in (("tau_vs_ref", f"KT vs {sweep[cat]['reference']}", "-o"),
                                  ("kendall_final", f"KT vs PPL@{final}", "-s"),
                                  ("spearman_final", f"SP vs PPL@{final}", "--^")):
            ys = [rows[str(x)][key]["mean"] for x in xs]
            err = [rows[str(x)][key]["std"] for x in xs]
            ax.errorbar(xs, ys, yerr=err, fmt=style, capsize=3, label=label)
        ax.set_xscale("log", base=2)
        ax.set_xlabel(cat)
        ax.set_ylim(-0.2, 1.05)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("rank correlation")
    fig.suptitle("Φ stability (Fig. 3-like): one factor varied, the others at the main setting", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_reports(out: Path, cfg: ValidateConfig, candidates, names: list[str], model_name: str = "",
                  extra: dict | None = None) -> dict:
    recs = Records(read_records(out / "candidates.jsonl"), candidates)
    summary = summarize(cfg, candidates, recs, names)
    summary["base"] = recs.base
    summary.update(extra or {})
    title = (f"## Proxy validation: {summary['candidates']} candidates at budget {cfg.budget} of {model_name or 'the model'}"
             f", {cfg.seeds} proxy seed(s)\n\nSpearman (SP) / Kendall (KT) of proxy vs −PPL (held-out, "
             f"{cfg.eval_sequences}×{cfg.eval_seq_len} tokens), mean ± std over seeds. Recovery: "
             f"{cfg.recover_batch}×{cfg.recover_seq_len} tokens/step, lr {cfg.recover_lr}. "
             f"Calibration {cfg.num_sequences}×{cfg.seq_len}, r={cfg.rank}. 'pick rank': true rank (1 = best) "
             f"of the candidate the proxy scores highest. 's / cand': seconds of the passes the proxy needs alone.")
    atomic_write_text(out / "table.md", format_table(summary, title))
    if summary["candidates"] >= 1:
        plot_scatter(cfg, candidates, recs, names, summary, out / "scatter.png")
    if cfg.sweep:
        sw = summarize_sweep(cfg, candidates, recs)
        summary["sweep"] = sw
        atomic_write_json(out / "sweep.json", sw)
        atomic_write_text(out / "sweep.md", "## Φ stability sweep\n\n" + format_sweep(sw, max(cfg.steps)))
        plot_sweep(sw, max(cfg.steps), out / "sweep.png")
    atomic_write_json(out / "results.json", {"config": dataclasses.asdict(cfg), **summary})
    return summary
