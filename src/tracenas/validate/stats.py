"""Rank statistics of the study: proxies vs the ground truth (`summarize`) and the stability of Φ across the
sweep settings (`summarize_sweep`), per seed, then mean and std over seeds."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np

from tracenas.arch import Genome
from tracenas.validate.config import ValidateConfig, _ints, proxy_label
from tracenas.validate.records import Records


def rank_correlations(scores, ppl) -> dict[str, float]:
    """Spearman ρ and Kendall τ(-b) of proxy scores against -ppl (higher proxy = lower ppl = better)."""
    from scipy import stats

    x = np.asarray([float(s) for s in scores], dtype=float)
    y = -np.asarray([float(p) for p in ppl], dtype=float)
    ok = ~(np.isnan(x) | np.isnan(y))
    x, y = x[ok], y[ok]
    if len(x) < 3 or np.unique(x).size < 2 or np.unique(y).size < 2:
        return {"spearman": float("nan"), "kendall": float("nan"), "n": len(x)}
    # ranks first: scipy's correlations reject infinities, a rank does not care
    rx, ry = stats.rankdata(x), stats.rankdata(y)
    return {"spearman": float(stats.spearmanr(rx, ry)[0]), "kendall": float(stats.kendalltau(rx, ry)[0]),
            "n": len(x)}


def _mean_std(values: list[float]) -> dict:
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=float)
    if v.size == 0:
        return {"mean": float("nan"), "std": float("nan"), "per_seed": values}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0, "per_seed": values}


def _score_value(x) -> float:
    return float(x)  # also "-inf" / "nan", as JSON records store non-finite scores


def summarize(cfg: ValidateConfig, candidates: list[tuple[Genome, str]], recs: Records, names: list[str]) -> dict:
    """Correlations of every proxy with every ground truth, per seed, then mean and std over seeds."""
    steps = cfg.steps
    done = [i for i in range(len(candidates)) if i in recs.truth]
    ppl = {s: {i: recs.truth[i]["ppl"][str(s)] for i in done} for s in steps}
    final = max(steps)
    res: dict[str, Any] = {"candidates": len(done), "steps": steps, "proxies": {}, "ground_truth": {}}
    for n in names:
        entry: dict[str, Any] = {"label": proxy_label(n), "cost_seconds": None, "vs": {}}
        costs, picks = [], []
        for s in steps:
            per = {"spearman": [], "kendall": []}
            for seed in range(cfg.seeds):
                have = [i for i in done if (i, seed) in recs.proxy and n in recs.proxy[(i, seed)]["scores"]]
                if len(have) < 3:
                    continue
                sc = [_score_value(recs.proxy[(i, seed)]["scores"][n]) for i in have]
                c = rank_correlations(sc, [ppl[s][i] for i in have])
                per["spearman"].append(c["spearman"])
                per["kendall"].append(c["kendall"])
                if s == final:
                    best = have[int(np.nanargmax(np.where(np.isnan(sc), -np.inf, sc)))]
                    order = sorted(have, key=lambda i: ppl[s][i])
                    picks.append(order.index(best) + 1)
                    costs += [recs.proxy[(i, seed)]["seconds"].get(n) for i in have
                              if recs.proxy[(i, seed)]["seconds"].get(n) is not None]
            entry["vs"][str(s)] = {"spearman": _mean_std(per["spearman"]), "kendall": _mean_std(per["kendall"])}
        entry["cost_seconds"] = float(np.mean(costs)) if costs else None
        entry["pick_rank"] = _mean_std([float(p) for p in picks])
        res["proxies"][n] = entry
    gt = {}
    for s in steps:
        c = rank_correlations([-ppl[s][i] for i in done], [ppl[final][i] for i in done])
        gt[str(s)] = {"vs_final": c, "median_ppl": float(np.median([ppl[s][i] for i in done])) if done else None}
    res["ground_truth"] = gt
    fam = defaultdict(list)
    for i in done:
        fam[candidates[i][1]].append(ppl[final][i])
    res["families"] = {f: {"n": len(v), "median_ppl": float(np.median(v))} for f, v in fam.items()}
    return res


def summarize_sweep(cfg: ValidateConfig, candidates, recs: Records) -> dict:
    """Kendall τ of Φ rankings at each setting vs the category's reference, and each setting vs ground truth."""
    from scipy import stats

    final, done = max(cfg.steps), [i for i in range(len(candidates)) if i in recs.truth]
    out: dict[str, Any] = {}
    for cat, values in (("N", _ints(cfg.sweep_n)), ("CL", _ints(cfg.sweep_cl)), ("r", _ints(cfg.sweep_rank))):
        ref = f"{cat}={max(values)}"
        rows = {}
        for v in values:
            key = f"{cat}={v}"
            tau_ref, sp_gt, kt_gt, sp_zs, kt_zs = [], [], [], [], []
            for seed in range(cfg.seeds):
                have = [i for i in done if (i, seed) in recs.sweep and key in recs.sweep[(i, seed)]["scores"]]
                if len(have) < 3:
                    continue
                x = [_score_value(recs.sweep[(i, seed)]["scores"][key]) for i in have]
                r = [_score_value(recs.sweep[(i, seed)]["scores"][ref]) for i in have]
                tau_ref.append(float(stats.kendalltau(stats.rankdata(x), stats.rankdata(r))[0]))
                c = rank_correlations(x, [recs.truth[i]["ppl"][str(final)] for i in have])
                z = rank_correlations(x, [recs.truth[i]["ppl"]["0"] for i in have]) if 0 in cfg.steps else None
                sp_gt.append(c["spearman"])
                kt_gt.append(c["kendall"])
                if z:
                    sp_zs.append(z["spearman"])
                    kt_zs.append(z["kendall"])
            rows[str(v)] = {"tau_vs_ref": _mean_std(tau_ref), "spearman_final": _mean_std(sp_gt),
                            "kendall_final": _mean_std(kt_gt), "spearman_zero_shot": _mean_std(sp_zs),
                            "kendall_zero_shot": _mean_std(kt_zs)}
        out[cat] = {"reference": ref, "rows": rows}
    cost = [recs.sweep[k].get("seconds") for k in recs.sweep if recs.sweep[k].get("seconds") is not None]
    out["extra_seconds_per_candidate"] = float(np.mean(cost)) if cost else None
    return out
