"""Plots and tables drawn from run directories (matplotlib, Agg backend: no display needed).

    plot_search("runs/demo")   # -> search/progress.png (Fig. 4a-like) and search/arch.png (Fig. 4b/c-like)
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import matplotlib

from tracenas.arch import ArchFile

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _read_history(out: Path) -> list[dict]:
    path = out / "history.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_search(out: str | os.PathLike) -> list[Path]:
    """Draw the search's progress and the best candidate's per-layer retention."""
    out = Path(out)
    state = json.loads((out / "search" / "state.json").read_text())
    arch = ArchFile.read(out).to_dict()
    hist = _read_history(out)
    written = []

    fig, ax = plt.subplots(figsize=(7, 4))
    xs = [h["generation"] for h in hist if isinstance(h["score"], (int, float))]
    ys = [h["score"] for h in hist if isinstance(h["score"], (int, float))]
    ax.scatter(xs, ys, s=10, alpha=0.35, color="tab:gray", label="scored candidates")
    best = [float(x) for x in state["best_per_generation"]]
    mean = [float(x) for x in state["mean_per_generation"]]
    gens = list(range(len(best)))
    ax.plot(gens, [b if math.isfinite(b) else float("nan") for b in best], "-o", color="tab:red", label="best")
    ax.plot(gens, [m if math.isfinite(m) else float("nan") for m in mean], "-s", color="tab:blue", label="mean")
    rounds = state.get("round_units") is not None and state.get("strategy") == "tyr"
    if rounds and arch.get("rounds"):  # tyr: a line where each round (a new supernet) begins
        per_round = math.ceil(len(best) / max(1, len(arch["rounds"])))
        for r in range(1, len(arch["rounds"])):
            ax.axvline(r * per_round - 0.5, color="tab:purple", ls="--", lw=1, label="new round" if r == 1 else None)
    ax.set_xlabel("generation")
    ax.set_ylabel(f"score ({arch.get('proxy')})")
    ax.set_title(f"search progress: {len(hist)} candidates scored")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / "search" / "progress.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    written.append(plot_arch(arch, out / "search" / "arch.png"))
    if arch.get("rounds"):
        written.append(plot_rounds(arch, out / "search" / "rounds.png"))
    elif arch.get("levels"):
        written.append(plot_levels(arch["levels"], out / "search" / "levels.png"))
    return written


def plot_rounds(arch: dict, path: str | os.PathLike) -> Path:
    """tyr: each round's winning per-block retention of attention and MLP (one line per round)."""
    rounds = arch["rounds"]
    from tracenas.models.adapter import ModelShape

    shape = arch["model"]["shape"]
    full_attn = ModelShape(**shape).attn_units
    n = len(rounds[0]["attn"])
    fig, axes = plt.subplots(2, 1, figsize=(max(6, n * 0.3), 5.5), sharex=True)
    for r, win in enumerate(rounds):
        color = plt.cm.viridis(r / max(1, len(rounds) - 1))
        axes[0].plot(range(n), [u / full_attn for u in win["attn"]], "-o", ms=3, color=color, label=f"round {r + 1}")
        axes[1].plot(range(n), [w / shape["intermediate_size"] for w in win["mlp"]], "-o", ms=3, color=color)
    axes[0].set_ylabel("attention kept")
    axes[1].set_ylabel("MLP kept")
    axes[1].set_xlabel("block")
    axes[0].set_title("tyr: per-block retention of each round's winner (coarse to fine)")
    axes[0].legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.set_ylim(-0.05, 1.05)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_levels(levels: dict, path: str | os.PathLike) -> Path:
    """Per-block database level of attention and MLP (0 = full; the top level removes the sub-block)."""
    n = len(levels["attn"])
    fig, ax = plt.subplots(figsize=(max(6, n * 0.3), 3.6))
    idx = list(range(n))
    ax.bar([i - 0.2 for i in idx], levels["attn"], width=0.4, label="attention level", color="tab:orange")
    ax.bar([i + 0.2 for i in idx], levels["mlp"], width=0.4, label="MLP level", color="tab:green")
    ax.set_xlabel("block")
    ax.set_ylabel("level (0 = full)")
    ax.set_title("darwinlm: final per-block levels")
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_arch(arch: dict, path: str | os.PathLike) -> Path:
    """Per-layer attention and MLP retention of one architecture; dropped blocks shown as gaps."""
    genome = arch["genome"]
    n = len(genome["keep"])
    attn = [a if k else 0.0 for a, k in zip(genome["attn"], genome["keep"])]
    mlp = [m if k else 0.0 for m, k in zip(genome["mlp"], genome["keep"])]
    fig, ax = plt.subplots(figsize=(max(6, n * 0.3), 3.6))
    idx = list(range(n))
    ax.bar([i - 0.2 for i in idx], attn, width=0.4, label="attention retention", color="tab:orange")
    ax.bar([i + 0.2 for i in idx], mlp, width=0.4, label="MLP retention", color="tab:green")
    for i, k in enumerate(genome["keep"]):
        if not k:
            ax.axvspan(i - 0.5, i + 0.5, color="tab:red", alpha=0.12, lw=0)
    ax.set_xlabel("block (shaded: dropped)")
    ax.set_ylabel("retention ratio")
    ax.set_ylim(0, 1.05)
    params = arch.get("params")
    title = "best architecture" + (f": {params / 1e6:.1f}M parameters" if params else "")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
