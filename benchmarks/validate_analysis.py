"""Deeper look at a `tracenas validate-proxy` run: where does each proxy win or lose?

    python benchmarks/validate_analysis.py runs/validate-smollm2            # prints markdown
    python benchmarks/validate_analysis.py runs/validate-smollm2 --write    # also RUN/analysis.md

Reads only the run directory (candidates.json, candidates.jsonl, validate.yaml); no model is loaded.
Proxy scores are averaged over seeds before ranking. Sections:
  1. correlation with the final recovered perplexity, overall and *within* each candidate family
     (width-only / depth-heavy / mixed): a proxy that only separates the families is not enough
     for a search, which compares neighbours;
  2. top-k: of the k best candidates by the proxy, how many are among the true k best;
  3. Kendall τ between proxies (which proxies carry the same information);
  4. perplexity vs structure (kept blocks, attention share) to see what the ground truth rewards;
  5. blends of the forward fitness (kl, ppl) with a trace proxy (sum of z-scores): does the gradient
     signal add anything the forward pass lacks?
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import yaml
from scipy import stats


def load(run: Path):
    cands = json.loads((run / "candidates.json").read_text())
    cfg = yaml.safe_load((run / "validate.yaml").read_text())
    truth, scores = {}, defaultdict(lambda: defaultdict(list))
    for line in (run / "candidates.jsonl").read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if r.get("type") == "truth":
            truth[r["index"]] = r
        elif r.get("type") == "proxy":
            for k, v in r["scores"].items():
                scores[r["index"]][k].append(float(v))
    return cands, cfg, truth, scores


def corr(x, y):
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.unique(x[ok]).size < 2:
        return float("nan"), float("nan")
    rx, ry = stats.rankdata(x[ok]), stats.rankdata(y[ok])
    return float(stats.spearmanr(rx, ry)[0]), float(stats.kendalltau(rx, ry)[0])


def f2(x):
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}"


def analyse(run: Path) -> str:
    cands, cfg, truth, scores = load(run)
    steps = sorted(int(s) for s in str(cfg["recover_steps"]).split(","))
    final = str(max(steps))
    idx = [i for i in range(len(cands)) if i in truth and i in scores]
    names = [n for n in scores[idx[0]]] if idx else []
    mean = {i: {n: float(np.mean(scores[i][n])) for n in names} for i in idx}
    neg_ppl = {i: -truth[i]["ppl"][final] for i in idx}
    fams = sorted({cands[i]["family"] for i in idx})
    out = [f"# Analysis of {run} ({len(idx)} candidates, PPL after {final} recovery steps)", ""]

    out += ["## 1. Spearman / Kendall vs −PPL, overall and within each family", "",
            "| proxy | all SP | all KT | " + " | ".join(f"{f} SP | {f} KT" for f in fams) + " |",
            "|---|---|---|" + "---|---|" * len(fams)]
    for n in names:
        row = [*corr([mean[i][n] for i in idx], [neg_ppl[i] for i in idx])]
        for f in fams:
            sub = [i for i in idx if cands[i]["family"] == f]
            row += [*corr([mean[i][n] for i in sub], [neg_ppl[i] for i in sub])]
        out.append(f"| {n} | " + " | ".join(f2(x) for x in row) + " |")
    counts = {f: sum(cands[i]["family"] == f for i in idx) for f in fams}
    out += ["", "family sizes: " + ", ".join(f"{f} {c}" for f, c in counts.items()) + "; median PPL: " +
            ", ".join(f"{f} {np.median([-neg_ppl[i] for i in idx if cands[i]['family'] == f]):.0f}" for f in fams), ""]

    k = max(3, len(idx) // 6)
    true_top = set(sorted(idx, key=lambda i: -neg_ppl[i])[:k])
    out += [f"## 2. Top-{k} overlap with the true top-{k}, and the true rank of the proxy's favourite", "",
            "| proxy | overlap | favourite's true rank |", "|---|---|---|"]
    order = sorted(idx, key=lambda i: -neg_ppl[i])
    for n in names:
        ranked = sorted(idx, key=lambda i: -mean[i][n] if math.isfinite(mean[i][n]) else math.inf)
        out.append(f"| {n} | {len(true_top & set(ranked[:k]))}/{k} | {order.index(ranked[0]) + 1} |")

    main = [n for n in ("phi", "pearson", "cosine", "gradnorm", "synflow", "naswot", "zico", "ppl", "kl", "params")
            if n in names]
    out += ["", "## 3. Kendall τ between proxies (seed-averaged scores)", "",
            "| | " + " | ".join(main) + " |", "|---|" + "---|" * len(main)]
    for a in main:
        out.append(f"| {a} | " + " | ".join(f2(corr([mean[i][a] for i in idx], [mean[i][b] for i in idx])[1])
                                           for b in main) + " |")

    blocks = [cands[i]["kept_blocks"] for i in idx]
    attn = [float(np.mean([a for a, kk in zip(cands[i]["genome"]["attn"], cands[i]["genome"]["keep"]) if kk]))
            for i in idx]
    mlp = [float(np.mean([m for m, kk in zip(cands[i]["genome"]["mlp"], cands[i]["genome"]["keep"]) if kk]))
           for i in idx]
    out += ["", "## 4. What the ground truth rewards (Spearman / Kendall with −PPL)", "",
            "| structure | SP | KT |", "|---|---|---|"]
    for label, x in (("kept blocks", blocks), ("mean attention retention of kept blocks", attn),
                     ("mean MLP retention of kept blocks", mlp)):
        sp, kt = corr(x, [neg_ppl[i] for i in idx])
        out.append(f"| {label} | {f2(sp)} | {f2(kt)} |")
    for s in steps:
        sp, kt = corr([-truth[i]["ppl"][str(s)] for i in idx], [neg_ppl[i] for i in idx])
        out.append(f"| −PPL after {s} steps | {f2(sp)} | {f2(kt)} |")

    blends = [(f, g, w) for f in ("kl", "ppl") for g in ("phi", "pearson") for w in (0.5, 1.0)
              if f in names and g in names]
    if blends:
        def z(name: str) -> np.ndarray:
            x = np.array([mean[i][name] for i in idx])
            return (x - x.mean()) / (x.std() or 1.0)

        out += ["", "## 5. Forward fitness blended with a trace proxy: z(fwd) + w·z(trace) vs −PPL", "",
                "| score | SP | KT |", "|---|---|---|"]
        y = [neg_ppl[i] for i in idx]
        for n in sorted({f for f, _, _ in blends} | {g for _, g, _ in blends}):
            out.append(f"| {n} alone | " + " | ".join(f2(v) for v in corr(z(n), y)) + " |")
        for f, g, w in blends:
            out.append(f"| z({f}) + {w:g}·z({g}) | " + " | ".join(f2(v) for v in corr(z(f) + w * z(g), y)) + " |")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--write", action="store_true", help="also write RUN/analysis.md")
    args = ap.parse_args()
    text = analyse(args.run)
    print(text)
    if args.write:
        (args.run / "analysis.md").write_text(text)


if __name__ == "__main__":
    main()
