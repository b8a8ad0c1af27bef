"""The search's plots, drawn from its run directory (matplotlib, Agg backend: no display needed).

    plot_search("runs/demo")   # -> search/progress.png (Fig. 4a-like) and search/arch.png (Fig. 4b/c-like)
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import matplotlib

from tracenas.arch import ArchFile
from tracenas.search.store import SearchStore

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_search(out: str | os.PathLike) -> list[Path]:
    """Draw the search's progress and the best candidate's per-layer retention."""
    out, store = Path(out), SearchStore(out)
    state = store.read_state()
    arch = ArchFile.read(out).to_dict()
    hist = store.read_history()
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
    if state.get("round_units") is not None and arch.get("rounds"):  # tyr: a line where each round (a new supernet) begins
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
    from tracenas.models.shape import ModelShape

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
