"""`run_search(cfg)`: model + data -> arch.json, history.jsonl, resumable state, plots.

    from tracenas.search.config import SearchConfig
    from tracenas.search.runner import run_search
    result = run_search(SearchConfig(preset="quick", budget="0.6", out="runs/demo"))

Run directory:
    search.yaml            resolved config          arch.json        best genome, sizes, score
    history.jsonl          every scored candidate   search.log       log of the run
    search/state.json      population, cache, RNG (atomic, after every generation)
    search/anchor.safetensors   importance and base traces (reused by --resume)
    search/timings.jsonl   seconds per candidate    search/summary.json  cost of the search
    search/progress.png    best/mean score per generation; search/arch.png  per-layer retention
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from tracenas.arch import ArchFile, Genome, SearchSpace, format_count
from tracenas.config import atomic_write_json, atomic_write_text, save_config
from tracenas.device import resolve_device, resolve_dtype
from tracenas.errors import RunDirError, TracenasError
from tracenas.rundir import RunDirGuard
from tracenas.masking import Importance, compute_importance, select, selection_to_list
from tracenas.proxy import Scorer, TraceProbes
from tracenas.proxy_registry import get_proxy
from tracenas.search.config import SearchConfig
from tracenas.search.evolution import Candidate, EvolutionConfig, EvolutionState

log = logging.getLogger(__name__)

STATE = "search/state.json"
ANCHOR = "search/anchor.safetensors"
HISTORY = "history.jsonl"


@dataclass
class SearchResult:
    out: Path
    best: Candidate
    budget: int
    base_params: int
    candidates_scored: int
    seconds: float


def _attach_log(out: Path, name: str) -> logging.Handler:
    handler = logging.FileHandler(out / f"{name}.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("tracenas").addHandler(handler)
    if logging.getLogger("tracenas").level == logging.NOTSET:
        logging.getLogger("tracenas").setLevel(logging.INFO)
    return handler


_MAY_CHANGE_ON_RESUME = ("resume", "iterations", "out")  # a resumed search may be extended, or moved


def saved_config(out: str | os.PathLike) -> dict:
    """The options a search in `out` was started with (its `search.yaml`), minus those a resume may change."""
    path = Path(out) / "search.yaml"
    if not path.is_file():
        return {}
    try:
        saved = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise RunDirError(f"cannot read {path}: {err}") from err
    if not isinstance(saved, dict):
        raise RunDirError(f"{path} is corrupt: expected a mapping of option: value")
    names = {f.name for f in dataclasses.fields(SearchConfig)}
    return {k: v for k, v in saved.items() if k in names and k not in _MAY_CHANGE_ON_RESUME}


def resume_config(cfg: SearchConfig, out: Path) -> SearchConfig:
    """`cfg` for resuming the search in `out`: options left unset (None) come from the saved config; a set
    option that differs from it is refused, so a resume never silently changes the search it continues."""
    if not (out / STATE).exists():
        raise RunDirError(f"--resume: no saved search in {out} (missing {STATE}); start it without --resume")
    saved = saved_config(out)
    values = dataclasses.asdict(cfg)
    values.update({k: v for k, v in saved.items() if values.get(k) is None})
    merged = SearchConfig(**values).resolved()
    diff = [k for k, v in saved.items() if getattr(merged, k) != v]
    if diff:
        changes = ", ".join(f"--{k.replace('_', '-')} {saved[k]!r} -> {getattr(merged, k)!r}" for k in diff)
        raise RunDirError(f"--resume with options that differ from the saved search ({changes}); leave them out "
                          f"to continue it as it was started (`tracenas search --out {out} --resume`)")
    return merged


def _prepare_out(cfg: SearchConfig, out: Path) -> None:
    """Refuse to start a new search over an existing one."""
    if (out / STATE).exists():
        raise RunDirError(f"{out} already holds a search; pass --resume to continue it or choose another --out")


def _save_anchor(path: Path, importance: Importance, base: dict | None) -> None:
    from safetensors.torch import save_file

    tensors = {f"importance.{k}": v.contiguous() for k, v in importance.state_dict().items()}
    for (i, name), t in (base or {}).items():
        tensors[f"trace.{i}.{name}"] = t.contiguous()
    tmp = path.with_suffix(".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(tmp))
    os.replace(tmp, path)


def _load_anchor(path: Path) -> tuple[Importance, dict]:
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    imp = Importance.from_state_dict({k[len("importance."):]: v for k, v in tensors.items()
                                      if k.startswith("importance.")})
    base = {}
    for k, v in tensors.items():
        if k.startswith("trace."):
            _, i, name = k.split(".", 2)
            base[(int(i), name)] = v
    return imp, base


def _truncate_jsonl(path: Path, n: int, required: bool = True) -> None:
    """Keep the first `n` records of a JSONL file: those of the candidates the saved state knows."""
    if not path.exists():
        if n and required:
            raise RunDirError(f"{path} is missing but the saved state records {n} candidates")
        return
    lines = path.read_text().splitlines(keepends=True)
    if len(lines) < n and required:
        raise RunDirError(f"{path} has {len(lines)} records but the saved state expects {n}")
    atomic_write_text(path, "".join(lines[:n]))


def run_search(cfg: SearchConfig, *, progress: bool = True, model=None, tokenizer=None, source=None) -> SearchResult:
    """Run (or resume) a search; everything it produces lands in `cfg.out`."""
    from tracenas import data as data_mod
    from tracenas.models.loading import resolve_source

    out = Path(cfg.out).expanduser()
    resuming = cfg.resume
    if resuming:
        cfg = resume_config(cfg, out)
    else:
        cfg = cfg.resolved()
        _prepare_out(cfg, out)
    if model is None:
        resolve_source(cfg.model)  # a missing model path fails here, before the run directory is touched
    data_mod.check_source(cfg.data)
    with RunDirGuard(out, resumable=lambda: (out / STATE).exists()):
        return _search(cfg, out, resuming, progress=progress, model=model, tokenizer=tokenizer, source=source)


def _search(cfg: SearchConfig, out: Path, resuming: bool, *, progress: bool, model, tokenizer,
            source) -> SearchResult:
    from tracenas import data as data_mod
    from tracenas.models import get_adapter, load_model

    handler = _attach_log(out, "search")
    t_start = time.perf_counter()
    try:
        device = resolve_device(cfg.device)
        dtype = resolve_dtype(cfg.dtype, device)
        if model is None:
            model, tokenizer, source = load_model(cfg.model, dtype=dtype, device=device)
        adapter = get_adapter(model)
        shape = adapter.shape()
        min_layers = cfg.min_layers if cfg.min_layers is not None else max(1, shape.num_layers // 2)
        space = SearchSpace(shape, min_layers=min_layers, include_embeddings=cfg.include_embeddings)
        budget = space.resolve_budget(cfg.budget)
        cfg = dataclasses.replace(cfg, min_layers=min_layers)
        if not resuming:  # a resume writes search.yaml only once the saved state has loaded
            save_config(out, "search", cfg)
        log.info("budget %s of %s parameters (%s), %d blocks, min_layers=%d", format_count(budget),
                 format_count(space.base_params()), "embeddings included" if cfg.include_embeddings else
                 "embeddings excluded", shape.num_layers, min_layers)

        batches = data_mod.token_batches(tokenizer, cfg.data, split="calibration", num_sequences=cfg.num_sequences,
                                         seq_len=cfg.seq_len, seed=cfg.seed)
        torch.manual_seed(cfg.seed)
        probes = None
        anchor_path = out / ANCHOR
        if resuming and anchor_path.exists():
            importance, base = _load_anchor(anchor_path)
            base = {k: v.to(device) for k, v in base.items()} or None
        else:
            log.info("importance pass over %d x %d calibration tokens", *batches.shape)
            importance = compute_importance(model, adapter, batches, micro_batch=cfg.micro_batch)
            base = None
        if get_proxy(cfg.proxy).method.needs_probes:
            probes = TraceProbes(model, adapter, rank=cfg.rank, seed=cfg.seed)
            if base is None:
                log.info("base gradient traces (rank %d)", cfg.rank)
                base, base_loss = probes.trace(batches, cfg.micro_batch, cfg.loss_chunk)
                log.info("base calibration loss %.4f", base_loss)
        _save_anchor(anchor_path, importance, base)
        scorer = Scorer(model, adapter, space, importance, batches, cfg.proxy, probes, base,
                        micro_batch=cfg.micro_batch, loss_chunk=cfg.loss_chunk)

        evo_cfg = EvolutionConfig(population=cfg.population, elites=cfg.elites, iterations=cfg.iterations,
                                  crossover=cfg.crossover, mutation_depth=cfg.mutation_depth,
                                  mutation_width=cfg.mutation_width, jitter_sigma=cfg.jitter_sigma,
                                  budget_tolerance=cfg.budget_tolerance, seed=cfg.seed,
                                  prior_powers=cfg.prior_power_list(), init_depth_flips=cfg.init_depth_flips)
        from tracenas.search.strategies import strategy_class

        if cfg.strategy == "uniform":
            evo_cfg = dataclasses.replace(evo_cfg, population=2, elites=1, iterations=1)
        evo = strategy_class(cfg.strategy)(evo_cfg, space, budget, scorer.score,
                        prior=(importance.attn_prior(), importance.mlp_prior()))
        history = out / HISTORY
        timings = out / "search" / "timings.jsonl"
        if resuming:
            state = EvolutionState.from_dict(json.loads((out / STATE).read_text()))
            evo.load_state(state)
            _truncate_jsonl(history, state.history_len)
            _truncate_jsonl(timings, state.history_len, required=False)
            save_config(out, "search", dataclasses.replace(cfg, resume=False))  # records an extended --iterations
            log.info("resuming after generation %d (%d candidates scored)", state.generation, state.history_len)
        else:
            for p in (history, timings):
                if p.exists():
                    p.unlink()

        total = 1 if cfg.strategy == "uniform" else (
            evo_cfg.population + (evo_cfg.iterations - 1) * (evo_cfg.population - evo_cfg.elites))
        bar = _progress(total, evo.state.history_len, progress)

        def on_scored(cand: Candidate, generation: int, info: dict) -> None:
            rec = {"index": evo.state.history_len - 1, "generation": generation, "score": _f(cand.score),
                   "params": cand.params, "loss": _f(info.get("loss")), "genome": cand.genome.to_dict()}
            for k in ("rho_attn", "rho_mlp"):
                if k in info:
                    rec[k] = [None if x is None else round(x, 6) for x in info[k]]
            with open(history, "a") as fh:
                fh.write(json.dumps(rec) + "\n")
            with open(timings, "a") as fh:
                fh.write(json.dumps({"index": rec["index"], "seconds": round(info.get("seconds", 0.0), 4)}) + "\n")
            if bar is not None:
                best = max((s for s in evo.state.scores.values() if s > float("-inf")), default=float("nan"))
                bar.update(1)
                bar.set_postfix(gen=generation, best=f"{best:.4f}", last=f"{cand.score:.4f}")

        def on_generation(state: EvolutionState) -> None:
            atomic_write_json(out / STATE, state.to_dict())
            _write_arch(out, cfg, space, importance, state.best(), budget, source)
            log.info("generation %d/%d: best %.4f mean %.4f", state.generation, evo_cfg.iterations,
                     state.best_per_generation[-1], state.mean_per_generation[-1])

        evo.on_scored, evo.on_generation = on_scored, on_generation
        try:
            best = evo.run()
        finally:  # also on an error, so that its message starts on a line of its own
            if bar is not None:
                bar.close()
        if probes is not None:
            probes.remove()
        if best is None:
            raise TracenasError("every candidate scored -inf (non-finite loss); see search.log")
        _write_arch(out, cfg, space, importance, best, budget, source)
        seconds = time.perf_counter() - t_start
        summary = {"candidates_scored": evo.state.history_len, "rejected_draws": evo.state.rejected,
                   "calibration_tokens": int(batches.numel()), "wall_seconds_this_session": round(seconds, 2),
                   "device": str(device), "dtype": str(dtype).replace("torch.", ""),
                   "threads": torch.get_num_threads()}
        atomic_write_json(out / "search" / "summary.json", summary)
        try:
            from tracenas.report import plot_search

            plot_search(out)
        except Exception as err:  # noqa: BLE001 - a plot must never fail a finished search
            log.warning("could not draw search plots: %s", err)
        log.info("best %s: score %.4f, %s parameters", cfg.proxy, best.score, format_count(best.params))
        return SearchResult(out, best, budget, space.base_params(), evo.state.history_len, seconds)
    finally:
        logging.getLogger("tracenas").removeHandler(handler)
        handler.close()


def _f(x):
    if x is None:
        return None
    return float(x) if math.isfinite(float(x)) else str(float(x))


def _progress(total: int, done: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, desc="search", unit="cand", dynamic_ncols=True)


def _write_arch(out: Path, cfg: SearchConfig, space: SearchSpace, importance: Importance,
                best: Candidate | None, budget: int, source) -> None:
    if best is None:
        return
    arch = space.to_arch_dict(best.genome)
    model_info = source.as_dict() if source is not None else {"spec": cfg.model}
    model_info["shape"] = space.shape.as_dict()
    extra = {"selection": selection_to_list(select(space, best.genome, importance)),
             "budget_tolerance": cfg.budget_tolerance, "include_embeddings": cfg.include_embeddings,
             "min_layers": space.min_layers, "strategy": cfg.strategy}
    af = ArchFile(model=model_info, arch=arch, score=_f(best.score), proxy=cfg.proxy, budget=budget, extra=extra)
    atomic_write_text(out / "arch.json", af.to_json() + "\n")


def read_arch(path: str | os.PathLike) -> ArchFile:
    p = Path(path)
    if p.is_dir():
        p = p / "arch.json"
    if not p.is_file():
        raise RunDirError(f"no arch.json at {p}; run `tracenas search` first")
    return ArchFile.from_json(p.read_text())


__all__ = ["SearchResult", "read_arch", "run_search", "Genome"]
