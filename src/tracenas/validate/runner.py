"""Proxy validation (paper Sec. 4.2, Table 1, Fig. 3): do proxy scores rank pruned candidates like
their held-out perplexity after an equal short recovery?

    tracenas validate-proxy --out runs/validate --num-candidates 30 --budget 0.6 --preset quick --seeds 3
    tracenas validate-proxy --out runs/validate --sweep                 # + stability in N, context, rank
    torchrun --nproc-per-node 2 -m tracenas validate-proxy --out ...    # candidates split over ranks (gloo)

Candidates are sampled once (deterministic by `--seed`; a third width-only, a third depth-heavy, a
third mixed, repaired into the budget window like the search). Ground truth is computed once per
candidate on the physically sliced model: eval-split perplexity zero-shot and after each step of
`--recover-steps` within ONE short recovery run (fixed tokens, LR, seed). Proxies are computed per
`--seeds` (each seed = other calibration windows and LoRA probes; the head/channel importance, and so
the candidates themselves, stay fixed). Every proxy derives from at most three passes per candidate
and seed: one gradient-trace pass (phi, pearson, cosine, dot, gradnorm, zico, variants, sweep), one
forward pass (ppl, kl, naswot) and one SynFlow pass.

Run directory (`--out`):
    validate.yaml       resolved config              candidates.json   the sampled genomes
    candidates.jsonl    append-only records: ground truth, proxy scores per seed, sweep (resume = skip them)
    results.json        correlations (mean/std over seeds), costs   table.md   Table-1-like markdown
    scatter.png         proxy vs recovered perplexity, one panel per proxy
    sweep.json, sweep.md, sweep.png   with --sweep           validate.log   log of the run
"""

from __future__ import annotations

import copy
import dataclasses
import contextlib
import logging
import time
from pathlib import Path

import torch
import yaml
from torch import nn

from tracenas.arch import SearchSpace
from tracenas.runtime.config import format_count
from tracenas.runtime.logs import run_log
from tracenas.runtime.config import atomic_write_json, json_float, save_config
from tracenas.runtime.distributed import init_dist, rank_device
from tracenas.runtime.errors import RunDirError
from tracenas.prune.masking import select
from tracenas.validate.candidates import sample_candidates
from tracenas.validate.config import _RESUMABLE, ValidateConfig, ValidationResult
from tracenas.validate.records import Records, append_record, read_records, repair_tail
from tracenas.validate.report import write_reports
from tracenas.validate.scoring import Validator
from tracenas.validate.stats import _score_value
from tracenas.validate.truth import ground_truth

log = logging.getLogger("tracenas.validate")  # one logger for the package: log lines name it as before the split


def proxy_names(cfg: ValidateConfig) -> list[str]:
    """The proxies (and Φ variants) the study scores: `ValidateConfig.proxy_list`."""
    return cfg.proxy_list()


def _check_resume(out: Path, cfg: ValidateConfig) -> None:
    saved_path = out / "validate.yaml"
    if not saved_path.exists():
        return
    saved = yaml.safe_load(saved_path.read_text()) or {}
    now = dataclasses.asdict(cfg)
    diff = sorted(k for k in now if k in saved and k not in _RESUMABLE and k != "out" and saved[k] != now[k]
                  and not (k == "min_layers" and now[k] is None))  # None = the default, saved resolved
    if diff:
        raise RunDirError(f"{out} holds a validation with other settings ({', '.join(diff)}); it cannot be resumed "
                          "with these: choose another --out")


def run_validation(cfg: ValidateConfig, *, model: nn.Module | None = None, tokenizer=None,
                   progress: bool = True) -> ValidationResult:
    """Sample candidates, compute what candidates.jsonl lacks (this rank's share), then write the reports."""
    from tracenas.models import get_adapter, load_model
    from tracenas.runtime.device import resolve_device, resolve_dtype, using_threads

    cfg = cfg.resolved()
    out = Path(cfg.out)
    dist = init_dist()
    rank, world = dist.rank, dist.world
    t_start = time.perf_counter()
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        _check_resume(out, cfg)
        repair_tail(out / "candidates.jsonl")
    dist.barrier()
    log_file = contextlib.ExitStack()
    log_file.enter_context(run_log(out, "validate" if rank == 0 else f"validate.rank{rank}"))
    log_file.enter_context(using_threads(cfg.threads))
    try:
        device = rank_device(resolve_device(cfg.device), dist)
        dtype = resolve_dtype(cfg.dtype, device)
        source = None
        if model is None:  # fp32: the ground truth slices these weights; the proxies get a `dtype` copy
            model, tokenizer, source = load_model(cfg.model, dtype=torch.float32, device=device)
        model_name = (source.spec if source is not None else cfg.model) or "model"
        adapter = get_adapter(model)
        shape = adapter.shape()
        min_layers = cfg.min_layers if cfg.min_layers is not None else max(1, shape.num_layers // 2)
        space = SearchSpace(shape, min_layers=min_layers, include_embeddings=cfg.include_embeddings)
        budget = space.resolve_budget(cfg.budget)
        names = proxy_names(cfg)
        candidates = sample_candidates(space, budget, cfg.num_candidates, cfg.seed, cfg.budget_tolerance)
        if rank == 0:
            # nothing but fields: `--config OUT/validate.yaml` reruns the same study
            save_config(out, "validate", dataclasses.replace(cfg, min_layers=min_layers))
            atomic_write_json(out / "candidates.json", [
                {"index": i, "family": f, "key": g.key(), "params": space.params(g), "kept_blocks": sum(g.keep),
                 "genome": g.to_dict()} for i, (g, f) in enumerate(candidates)])
        log.info("%d candidates at %s of %s parameters (window %.0f%%), %d proxies, %d seed(s), rank %d of %d",
                 len(candidates), format_count(budget), format_count(space.base_params()),
                 100 * cfg.budget_tolerance, len(names), cfg.seeds, rank, world)
        if not cfg.report_only:
            _compute(cfg, out, model, adapter, space, tokenizer, candidates, names, rank, world, progress, dtype)
        dist.barrier()
        summary = {}
        if rank == 0:
            summary = write_reports(out, cfg, candidates, names, model_name,
                                    extra={"budget_params": budget, "base_params": space.base_params(),
                                           "min_layers": min_layers, "world_size": world})
        dist.barrier()
        seconds = time.perf_counter() - t_start
        log.info("validation done in %.0f s -> %s", seconds, out / "table.md")
        return ValidationResult(out, summary, len(candidates), seconds)
    finally:
        log_file.close()
        dist.close()


def _compute(cfg, out, model, adapter, space, tokenizer, candidates, names, rank, world, progress,
             dtype: torch.dtype) -> None:
    from tracenas import data
    from tracenas.runtime.perplexity import perplexity

    path = out / "candidates.jsonl"
    recs = Records(read_records(path), candidates)
    steps = cfg.steps
    eval_tokens = data.token_batches(tokenizer, cfg.data, split="eval", num_sequences=cfg.eval_sequences,
                                     seq_len=cfg.eval_seq_len)
    train_tokens = data.token_batches(tokenizer, cfg.data, split="train",
                                      num_sequences=max(1, max(steps) * cfg.recover_batch), seq_len=cfg.recover_seq_len)
    mine = [i for i in range(len(candidates)) if i % world == rank]
    todo = [i for i in mine if i not in recs.truth or any(recs.missing_proxies(i, s, names) for s in range(cfg.seeds))
            or (cfg.sweep and any((i, s) not in recs.sweep for s in range(cfg.seeds)))]
    autocast = torch.bfloat16 if cfg.recover_dtype == "bfloat16" else None
    device = next(model.parameters()).device
    if rank == 0 and recs.base is None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast is not None):
            r = perplexity(model, eval_tokens, seq_len=cfg.eval_seq_len, micro_batch=cfg.micro_batch,
                           chunk=cfg.loss_chunk)
        append_record(path, {"type": "base", "ppl": r["ppl"], "nll": r["nll"], "params": space.base_params()})
        log.info("base model: eval perplexity %.2f", r["ppl"])
    log.info("rank %d: %d of its %d candidates have work left", rank, len(todo), len(mine))
    if not todo:
        return
    from tracenas.models import get_adapter

    probe = Validator(cfg, model, adapter, space, tokenizer)  # importance from the fp32 weights
    if dtype != next(model.parameters()).dtype:
        pmodel = copy.deepcopy(model).to(dtype)
        validator = Validator(cfg, pmodel, get_adapter(pmodel), space, tokenizer, importance=probe.importance)
        validator._windows = probe._windows
    else:
        validator = probe
    from tqdm.auto import tqdm

    bar = tqdm(total=len(mine), initial=len(mine) - len(todo), desc=f"validate[{rank}]" if world > 1 else "validate",
               unit="cand", dynamic_ncols=True, disable=not progress)
    try:
        for i in todo:
            genome, family = candidates[i]
            key = genome.key()
            if i not in recs.truth:
                sel = select(space, genome, validator.importance)
                t = ground_truth(model, adapter, sel, eval_tokens, train_tokens, steps, lr=cfg.recover_lr,
                                 batch_size=cfg.recover_batch, micro_batch=cfg.micro_batch, seed=cfg.seed,
                                 loss_chunk=cfg.loss_chunk, autocast=autocast)
                rec = {"type": "truth", "index": i, "key": key, "family": family, **t}
                append_record(path, rec)
                recs.truth[i] = rec
                log.info("candidate %d (%s, %d blocks): ppl %s in %.0f s", i, family, sum(genome.keep),
                         ", ".join(f"{s}: {p:.1f}" for s, p in t["ppl"].items()), t["seconds"]["total"])
            for seed in range(cfg.seeds):
                missing = recs.missing_proxies(i, seed, names)
                need_sweep = cfg.sweep and (i, seed) not in recs.sweep
                if not missing and not need_sweep:
                    continue
                ctx = validator.context(seed)
                scores, cost, sweep = validator.score(ctx, genome, missing, need_sweep)
                if missing:
                    rec = {"type": "proxy", "index": i, "key": key, "seed": seed,
                           "scores": {k: json_float(v) for k, v in scores.items()},
                           "seconds": {k: round(v, 4) for k, v in cost.items()}}
                    if validator.last_rho is not None:
                        rec["rho"] = {k: [None if x is None else round(x, 6) for x in v]
                                      for k, v in validator.last_rho.items()}
                    append_record(path, rec)
                    recs.proxy[(i, seed)]["scores"].update(scores)
                if need_sweep:
                    sec = sweep.pop("_seconds", None) if sweep else None
                    append_record(path, {"type": "sweep", "index": i, "key": key, "seed": seed,
                                         "scores": {k: json_float(v) for k, v in (sweep or {}).items()}, "seconds": sec})
                    recs.sweep[(i, seed)] = {"scores": sweep or {}}
            bar.update(1)
            if "phi" in names and (i, 0) in recs.proxy:
                bar.set_postfix(ppl=f"{recs.truth[i]['ppl'][str(max(steps))]:.1f}",
                                phi=f"{_score_value(recs.proxy[(i, 0)]['scores'].get('phi', float('nan'))):.3f}")
    finally:
        bar.close()
