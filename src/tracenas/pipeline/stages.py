"""The stages of `tracenas run`, each behind one contract: the jobs it contributes to a run directory, each with its
stage's config, `is_done` and `run`. `run_pipeline` loops over them; nothing here knows a strategy.

A stage's knowledge stays in its folder (config dataclass, `is_done(run_dir, cfg)`, `run(cfg)`, report section);
what lives here is only how the run wires them together: the run's shared options copied into each section, and
which model each stage reads (the export reads `arch.json`, recovery the export, eval and bench both).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tracenas.models.defaults import DEFAULT_MODEL
from tracenas.pipeline.config import SHARED, RunConfig

log = logging.getLogger(__name__)


@dataclass
class Job:
    """One unit of a stage's work in a run directory."""

    name: str  # log and timing key: search, export, recover, eval_base, ...
    cfg: Any  # the stage's config dataclass, fully wired
    is_done: Callable[[], bool]
    run: Callable[[bool], Any]  # progress -> result
    missing: Callable[[], str | None] = lambda: None  # why it cannot run now (None: it can)
    required: bool = False  # a missing input is an error (else the job is skipped with a warning)


def shared(cfg: RunConfig, section: Any) -> Any:
    """`section` with the run's shared options (model, data, preset, seed, device) where it has them; threads are
    set once for the whole run."""
    names = {f.name for f in dataclasses.fields(section)}
    return dataclasses.replace(section, **{k: getattr(cfg, k) for k in SHARED if k in names})


def search_jobs(cfg: RunConfig, out: Path) -> list[Job]:
    from tracenas.search.recipes import runner

    scfg = dataclasses.replace(shared(cfg, cfg.search), out=str(out)).resolved()
    return [Job("search", scfg, lambda: runner.is_done(out, scfg), lambda p: runner.run(scfg, progress=p))]


def export_jobs(cfg: RunConfig, out: Path) -> list[Job]:
    from tracenas.export import checkpoint

    ecfg = dataclasses.replace(cfg.export, run_dir=str(out), model=cfg.model, data=cfg.data)

    def run(progress: bool) -> Path:
        job_cfg = ecfg
        # a level-based search (darwinlm, tyr) takes its re-solved weights from its database, not from --reconstruct
        if "levels" in json.loads((out / "arch.json").read_text()):
            job_cfg = dataclasses.replace(ecfg, reconstruct="none", importance=None)
        return checkpoint.run(job_cfg)

    return [Job("export", ecfg, lambda: checkpoint.is_done(out, ecfg), run)]


def recover_jobs(cfg: RunConfig, out: Path) -> list[Job]:
    import tracenas.recover as recovery  # the package's public names (looked up when the job runs)
    from tracenas.export import checkpoint

    rec_dir = out / "recover"
    rcfg = dataclasses.replace(shared(cfg, cfg.recover), model=str(out / "model"), out=str(rec_dir),
                               teacher=(cfg.model or DEFAULT_MODEL) if cfg.recover.distill else None,
                               resume=(rec_dir / "checkpoints").exists())

    def missing() -> str | None:
        if not checkpoint.is_done(out):
            return f"recover needs the exported model in {out / 'model'}; run the export stage"
        return None

    return [Job("recover", rcfg, lambda: recovery.is_done(rec_dir, rcfg), lambda p: recovery.recover(rcfg, progress=p),
                missing, required=True)]


def final_model(out: Path) -> Path:
    """The model the run ends with: the recovered one, else the pruned export."""
    recovered = out / "recover" / "model"
    return recovered if (recovered / "config.json").exists() else out / "model"


def eval_jobs(cfg: RunConfig, out: Path) -> list[Job]:
    from tracenas.eval import evaluate

    targets = [("pruned", str(out / "model")), ("recovered", str(out / "recover" / "model"))]
    if cfg.eval_base:
        targets.insert(0, ("base", cfg.model))
    jobs = []
    for name, spec in targets:
        ecfg = dataclasses.replace(shared(cfg, cfg.eval), model=spec, out=str(out / "eval" / name))

        def missing(name=name, spec=spec) -> str | None:
            if name != "base" and not (Path(spec) / "config.json").exists():
                return f"eval {name}: no model at {spec}, skipped"
            return None

        jobs.append(Job(f"eval_{name}", ecfg, lambda c=ecfg: evaluate.is_done(c.out, c),
                        lambda p, c=ecfg: evaluate.evaluate(c, progress=p), missing))
    return jobs


def bench_jobs(cfg: RunConfig, out: Path) -> list[Job]:
    from tracenas.bench import runner

    bcfg = dataclasses.replace(shared(cfg, cfg.bench), base=cfg.model or DEFAULT_MODEL, out=str(out / "bench.json"))

    def missing() -> str | None:
        target = final_model(out)
        return None if (target / "config.json").exists() else f"bench: no model at {target}, skipped"

    return [Job("bench", bcfg, lambda: runner.is_done(out, bcfg), lambda p: runner.run_bench(final_model(out), bcfg),
                missing)]


STAGE_JOBS: dict[str, Callable[[RunConfig, Path], list[Job]]] = {
    "search": search_jobs, "export": export_jobs, "recover": recover_jobs, "eval": eval_jobs, "bench": bench_jobs}


def check(cfg: RunConfig) -> None:
    """Bad stage options fail before any work (e.g. `--importance obs --reconstruct none`)."""
    cfg.stage_list()
    cfg.export.reconstruction()
