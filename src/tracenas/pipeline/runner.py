"""`tracenas run`: search -> export -> recover -> eval (-> bench) in one run directory, resumable as a whole.

    from tracenas.pipeline.runner import RunConfig, run_pipeline
    run_pipeline(RunConfig(preset="quick", budget="0.6", out="runs/demo"))

Layout of `out/`:
    run.yaml                    resolved pipeline config
    arch.json, history.jsonl, search/   the search (see tracenas.search.recipes.runner)
    model/                      exported pruned checkpoint (zero-shot)
    recover/                    continued pretraining; recover/model/ is the recovered checkpoint
    eval/{base,pruned,recovered}/results.json
    bench.json                  speed of the recovered model vs the base
    recover/model.gguf          with --gguf TYPE: the final model for llama.cpp / Ollama (model.gguf without recovery)
    report.md                   everything above on one page
A stage whose outputs are complete is skipped; an interrupted search or recovery is resumed.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from tracenas.pipeline.config import STAGES, RunConfig  # noqa: F401 - RunConfig: the library entry names both
from tracenas.pipeline.stages import STAGE_JOBS, check, final_model
from tracenas.runtime.config import atomic_write_json, save_config
from tracenas.runtime.errors import TracenasError
from tracenas.runtime.logs import run_log
from tracenas.runtime.rundir import RunDirGuard

log = logging.getLogger(__name__)


def run_pipeline(cfg: RunConfig, *, progress: bool = True) -> dict:
    """Run every requested stage that is not complete yet; returns the report's data."""
    out = Path(cfg.out).expanduser()
    check(cfg)  # bad options fail before any work
    # here: `tracenas run --help` reads this module without torch
    from tracenas.runtime.device import using_threads
    from tracenas.search.recipes.runner import saved_candidates

    # A failure before the search saved anything resumable leaves the disk as it was.
    with RunDirGuard(out, resumable=lambda: saved_candidates(out) > 0), run_log(out, "run"), \
            using_threads(cfg.threads):
        return _run_stages(cfg, out, progress)


def _write_gguf(qtype: str, checkpoint: Path, timings: dict[str, float]) -> None:
    """`--gguf TYPE`: the final checkpoint as one GGUF file next to it; an existing one is kept (resume)."""
    from tracenas.export.gguf.writer import export_checkpoint, gguf_path

    target = gguf_path(checkpoint)
    if not (checkpoint / "config.json").exists():
        log.warning("gguf: no model at %s, skipped", checkpoint)
    elif target.exists() and target.stat().st_mtime >= (checkpoint / "config.json").stat().st_mtime:
        log.info("gguf: %s is complete, skipped", target)
    else:
        t = time.perf_counter()
        export_checkpoint(checkpoint, target, qtype=qtype)
        timings["gguf"] = time.perf_counter() - t


def resolved(cfg: RunConfig, out: Path) -> dict:
    """run.yaml: the run's own options and, per stage, the config its first job runs with (presets resolved)."""
    import dataclasses

    data = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if not f.metadata.get("section")}
    for name in STAGES:
        jobs = STAGE_JOBS[name](cfg, out)
        data[name] = dataclasses.asdict(jobs[0].cfg)
    return data


def _run_stages(cfg: RunConfig, out: Path, progress: bool) -> dict:
    save_config(out, "run", resolved(cfg, out))
    timings: dict[str, float] = {}
    for name in STAGES:
        if name in cfg.stage_list():
            for job in STAGE_JOBS[name](cfg, out):
                _run_job(job, progress, timings)
        if name == "recover" and cfg.gguf:
            _write_gguf(cfg.gguf, final_model(out), timings)
    prev = {}
    if (out / "run_timings.json").exists():
        prev = json.loads((out / "run_timings.json").read_text())
    prev.update({k: round(v, 2) for k, v in timings.items()})
    atomic_write_json(out / "run_timings.json", prev)
    from tracenas.pipeline.report import write_report

    return write_report(out)


def _run_job(job, progress: bool, timings: dict[str, float]) -> None:
    label = job.name.replace("_", " ")
    if job.is_done():
        log.info("%s: complete, skipped", label)
        return
    reason = job.missing()
    if reason is not None:
        if job.required:
            raise TracenasError(reason)
        log.warning(reason)
        return
    t = time.perf_counter()
    job.run(progress)
    timings[job.name] = time.perf_counter() - t


__all__ = ["run_pipeline"]
