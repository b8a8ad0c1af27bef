"""The recovery's line in `report.md`."""

from __future__ import annotations

import json
from pathlib import Path


def section(recover_dir: str | Path) -> tuple[list[str], dict | None]:
    """(report lines, recover.json's content) for the recovery in `recover_dir`."""
    path = Path(recover_dir) / "recover.json"
    rec = json.loads(path.read_text()) if path.exists() else None
    if not rec:
        return [], rec
    how = f" (distilled from {rec['teacher']})" if rec.get("teacher") else ""
    return [f"Recovery{how}: {rec['steps']} steps, {rec['tokens_seen']:,} tokens, final training loss "
            f"{rec['final_loss']:.3f}, {rec['wall_time_s']:.0f} s.", "", "![loss](recover/loss.png)", ""], rec
