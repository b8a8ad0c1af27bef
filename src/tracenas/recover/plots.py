"""loss.png: the training loss curve."""

from __future__ import annotations

import os
from pathlib import Path


def plot_loss(records: list[dict], path: Path) -> None:
    """Training loss (and LR) against tokens seen, as a PNG. Uses the Agg canvas, no global backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not records:
        return
    fig = Figure(figsize=(7, 4), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = [r["tokens"] for r in records]
    ax.plot(x, [r["loss"] for r in records], lw=0.8, color="tab:blue", label="train loss")
    if len(records) >= 20:
        k = max(5, len(records) // 50)
        smooth = [sum(r["loss"] for r in records[max(0, i - k + 1):i + 1]) / min(k, i + 1) for i in range(len(records))]
        ax.plot(x, smooth, lw=1.6, color="tab:orange", label=f"mean of {k} steps")
    ax.set_xlabel("tokens")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    lr_ax = ax.twinx()
    lr_ax.plot(x, [r["lr"] for r in records], lw=0.8, color="gray", alpha=0.6)
    lr_ax.set_ylabel("learning rate", color="gray")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    os.replace(tmp, path)
