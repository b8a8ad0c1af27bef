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

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from tracenas.runtime.config import atomic_write_json, opt, save_config
from tracenas.runtime.errors import TracenasError
from tracenas.runtime.logs import run_log
from tracenas.runtime.rundir import RunDirGuard
from tracenas.eval.config import PRESETS as EVAL_PRESETS
from tracenas.recover.config import DTYPES, PRESETS as RECOVER_PRESETS
from tracenas.search.config import DARWINLM_PRESETS, TYR_PRESETS, preset_help
from tracenas.search.registry import strategy_names

log = logging.getLogger(__name__)

STAGES = ("search", "export", "recover", "eval", "bench")


@dataclass
class RunConfig:
    out: str = opt("runs/run", "run directory for every stage's outputs and report.md")
    threads: int | None = opt(None, "CPU threads for torch (default: torch's choice, one per core); 1 is often fastest on a small shared machine")
    model: str | None = opt(None, "HF id, local directory or .gguf; empty = embedded SmolLM2-135M")
    data: str | None = opt(None, "text for calibration, training and evaluation (disjoint splits); empty = embedded "
                                 "Wikipedia")
    budget: str = opt("0.6", "parameter budget: count (81M) or fraction (0.6)")
    tie_embeddings: bool = opt(False, "tie an output head equal to the embeddings up to quantization noise (GGUF)")
    budget_memory: str | None = opt(None, "budget in serving memory instead (300MB, 1.5GiB or a fraction); see search")
    budget_flops: str | None = opt(None, "budget in FLOPs per token instead (150M or a fraction); see search")
    budget_dtype: str = opt("bfloat16", "bytes per value for --budget-memory", choices=("float32", "bfloat16", "float16"))
    budget_context: int = opt(4096, "context length for --budget-memory's KV cache and --budget-flops")
    budget_batch: int = opt(1, "sequences in the KV cache for --budget-memory")
    preset: str = opt("quick", "quick (CPU) or paper settings for every stage", choices=("quick", "paper"))
    strategy: str = opt("evolution", lambda: "search strategy: " + ", ".join(strategy_names()), choices=strategy_names)
    proxy: str | None = opt(None, "search score (preset: kl for quick, phi for paper; see `tracenas search --help`)")
    stages: str = opt(",".join(STAGES), "comma-separated stages to run, in pipeline order")
    seed: int = opt(0, "seed of every stage")
    device: str = opt("auto", "auto, cpu, cuda, ...")
    # search knobs most worth overriding (the rest: run `tracenas search` directly)
    population: int | None = opt(None, preset_help("population", "search population"))
    elites: int | None = opt(None, preset_help("elites", "search elites"))
    iterations: int | None = opt(None, preset_help("iterations", "search generations"))
    num_sequences: int | None = opt(None, preset_help("num_sequences", "calibration sequences"))
    seq_len: int | None = opt(None, preset_help("seq_len", "calibration sequence length"))
    offspring: int | None = opt(None, preset_help("offspring", "darwinlm: children per generation", DARWINLM_PRESETS))
    survivors: str | None = opt(None, preset_help("survivors", "darwinlm: survivors per stage", DARWINLM_PRESETS))
    stage_tokens: str | None = opt(None, preset_help("stage_tokens", "darwinlm: scoring tokens per stage",
                                                     DARWINLM_PRESETS))
    finetune_tokens: str | None = opt(None, preset_help("finetune_tokens", "darwinlm: fine-tuning tokens per stage",
                                                        DARWINLM_PRESETS))
    finetune_lr: float | None = opt(None, preset_help("finetune_lr", "darwinlm: fine-tuning learning rate",
                                                      DARWINLM_PRESETS))
    database: str | None = opt(None, "darwinlm: sparsity-level database (default: built in OUT/database)")
    rounds: int | None = opt(None, preset_help("rounds", "tyr: prune-and-search rounds", TYR_PRESETS))
    database_sequences: int | None = opt(None, "darwinlm / tyr: database / supernet calibration windows (default: "
                                               "--num-sequences)")
    database_seq_len: int | None = opt(None, "darwinlm / tyr: tokens per database / supernet calibration window "
                                             "(default: --seq-len)")
    fitness: str = opt("kl", "tyr: exact kl or the official top-k sparse_kl", choices=("kl", "sparse_kl"))
    supernet_inputs: str = opt("expected", "tyr: supernet calibration inputs (see `tracenas search --help`)",
                               choices=("expected", "expected-uniform", "dense"))
    rank: int | None = opt(None, preset_help("rank", "LoRA probe rank"))
    min_layers: int | None = opt(None, "minimum kept blocks (default: half)")
    budget_tolerance: float = opt(0.02, "candidates must land in [C*(1-tol), C] parameters")
    # export
    reconstruct: str = opt("dense", "re-solve the kept weights at export by least squares on calibration text (see "
                                  "`tracenas export --help`): dense inputs (default: best after recovery at 60 percent, a tie or "
                                  "slightly worse at 80 percent; docs/reconstruction.md), sequential, or none (cut only)",
                           choices=["dense", "sequential", "none"])
    importance: str | None = opt(None, "which heads / channels the export keeps: obs (default with --reconstruct) or "
                                       "wanda (the search's ranking; the default with --reconstruct none)",
                                 choices=["wanda", "obs"])
    # recovery
    recover_tokens: str | None = opt(None, preset_help("tokens", "recovery token budget, e.g. 200k", RECOVER_PRESETS))
    recover_seq_len: int | None = opt(None, preset_help("seq_len", "recovery sequence length", RECOVER_PRESETS))
    recover_lr: float | None = opt(None, preset_help("lr", "recovery peak learning rate", RECOVER_PRESETS))
    recover_dtype: str = opt("auto", "recovery compute dtype: auto (bf16 autocast on GPU, float32 on CPU) or bfloat16 "
                                     "(about 1.5x faster on a CPU with AVX512-BF16, but it recovered a badly damaged model worse: "
                                     "docs/comparison.md); master weights stay float32",
                             choices=DTYPES)
    distill: bool = opt(True, "recover by distillation from the base model (loss 0.5 x cross-entropy + 0.5 x KL to the "
                              "base model's next-token distribution): better in and out of domain at equal tokens "
                              "(docs/comparison.md); false: plain next-token loss, faster (no teacher "
                              "forward pass) and without the base model in memory")
    gguf: str | None = opt(None, "also write the final model (recovered, else pruned) as one GGUF file for llama.cpp / "
                                 "Ollama with this weight type, next to its directory (RUN/recover/model.gguf)",
                           choices=("f32", "f16", "bf16", "q8_0"))
    # evaluation and speed
    tasks: str | None = opt(None, "lm-eval tasks for every evaluated model (e.g. 'paper' or local:file.jsonl)")
    ppl_max_tokens: int | None = opt(None, preset_help("ppl_max_tokens", "cap on perplexity tokens (0 = all)", EVAL_PRESETS))
    eval_base: bool = opt(True, "also evaluate the unpruned base model (for the report)")
    bench_prompt_len: int | None = opt(None, "bench prompt length (default: CPU/GPU-sized)")
    bench_gen_len: int | None = opt(None, "bench generated tokens (default: CPU/GPU-sized)")
    bench_trials: int | None = opt(None, "bench timed trials (default: CPU/GPU-sized)")

    def stage_list(self) -> list[str]:
        stages = [s.strip() for s in self.stages.split(",") if s.strip()]
        bad = [s for s in stages if s not in STAGES]
        if bad:
            raise TracenasError(f"unknown stage(s) {', '.join(bad)}; choose from {', '.join(STAGES)}")
        return stages


def reconstruction_settings(cfg: RunConfig):
    """The export's `ReconstructSettings` (None: cut only), on the run's data (calibration split of seed 0,
    disjoint from the eval split whatever the run's seed)."""
    from tracenas.prune.reconstruct import ReconstructSettings

    if cfg.reconstruct in (None, "none"):
        if cfg.importance == "obs":
            raise TracenasError("--importance obs chooses what to keep by reconstruction error: it needs "
                                "--reconstruct dense or sequential")
        return None
    return ReconstructSettings(cfg.reconstruct, cfg.importance or "obs", data=cfg.data)


def run_pipeline(cfg: RunConfig, *, progress: bool = True) -> dict:
    """Run every requested stage that is not complete yet; returns the report's data."""
    from tracenas.search.config import SearchConfig

    out = Path(cfg.out).expanduser()
    stages = cfg.stage_list()
    search_cfg = SearchConfig(model=cfg.model, data=cfg.data, out=str(out), budget=cfg.budget, preset=cfg.preset,
                              strategy=cfg.strategy, proxy=cfg.proxy, seed=cfg.seed, device=cfg.device,
                              population=cfg.population, elites=cfg.elites, iterations=cfg.iterations,
                              num_sequences=cfg.num_sequences, seq_len=cfg.seq_len, rank=cfg.rank,
                              min_layers=cfg.min_layers, budget_tolerance=cfg.budget_tolerance,
                              budget_memory=cfg.budget_memory, budget_flops=cfg.budget_flops,
                              budget_dtype=cfg.budget_dtype, budget_context=cfg.budget_context,
                              budget_batch=cfg.budget_batch, tie_embeddings=cfg.tie_embeddings,
                              offspring=cfg.offspring, survivors=cfg.survivors, stage_tokens=cfg.stage_tokens,
                              finetune_tokens=cfg.finetune_tokens, finetune_lr=cfg.finetune_lr,
                              database=cfg.database, rounds=cfg.rounds, fitness=cfg.fitness,
                              supernet_inputs=cfg.supernet_inputs, database_sequences=cfg.database_sequences,
                              database_seq_len=cfg.database_seq_len).resolved()
    cfg = dataclasses.replace(cfg, proxy=search_cfg.proxy)  # the preset's proxy, recorded in run.yaml
    reconstruction_settings(cfg)  # bad export options fail before any work
    from tracenas.runtime.device import using_threads  # here: `tracenas run --help` reads this module without torch
    from tracenas.search.recipes.runner import saved_candidates

    # A failure before the search saved anything resumable leaves the disk as it was.
    with RunDirGuard(out, resumable=lambda: saved_candidates(out) > 0), run_log(out, "run"), \
            using_threads(cfg.threads):
        return _run_stages(cfg, search_cfg, out, stages, progress)


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


def _search_stage(cfg: RunConfig, search_cfg, out: Path, progress: bool, timings: dict[str, float]) -> None:
    from tracenas.search.recipes import runner as search_stage
    from tracenas.search.registry import strategy_class

    generations = strategy_class(cfg.strategy).config_from(search_cfg).total_generations  # uniform: 1
    if search_stage.is_done(out, generations):
        log.info("search: complete, skipped")
    else:
        t = time.perf_counter()
        resume = search_stage.saved_candidates(out) > 0
        search_stage.run_search(dataclasses.replace(search_cfg, resume=resume), progress=progress)
        timings["search"] = time.perf_counter() - t


def _eval_stage(cfg: RunConfig, out: Path, model_dir: Path, recovered: Path, progress: bool,
                timings: dict[str, float]) -> None:
    from tracenas.eval.evaluate import EvalConfig, evaluate
    from tracenas.eval.evaluate import is_done as eval_done

    targets = [("pruned", str(model_dir)), ("recovered", str(recovered))]
    if cfg.eval_base:
        targets.insert(0, ("base", cfg.model))
    for name, spec in targets:
        res_dir = out / "eval" / name
        if eval_done(res_dir):
            log.info("eval %s: complete, skipped", name)
            continue
        if name != "base" and not (Path(spec) / "config.json").exists():
            log.warning("eval %s: no model at %s, skipped", name, spec)
            continue
        t = time.perf_counter()
        evaluate(EvalConfig(model=spec, data=cfg.data, preset=cfg.preset, tasks=cfg.tasks,
                            ppl_max_tokens=cfg.ppl_max_tokens, device=cfg.device, seed=cfg.seed,
                            out=str(res_dir)), progress=progress)
        timings[f"eval_{name}"] = time.perf_counter() - t


def _run_stages(cfg: RunConfig, search_cfg, out: Path, stages: list[str], progress: bool) -> dict:
    save_config(out, "run", cfg)
    timings: dict[str, float] = {}
    if "search" in stages:
        _search_stage(cfg, search_cfg, out, progress, timings)

    model_dir = out / "model"
    if "export" in stages:
        from tracenas.export import checkpoint as export_stage

        if export_stage.is_done(out):
            log.info("export: complete, skipped")
        else:
            t = time.perf_counter()
            # a level-based search (darwinlm, tyr) takes its re-solved weights from its database, not from --reconstruct
            from_database = "levels" in json.loads((out / "arch.json").read_text())
            export_stage.export_run(out, model_spec=cfg.model,
                                    reconstruction=None if from_database else reconstruction_settings(cfg))
            timings["export"] = time.perf_counter() - t

    rec_dir = out / "recover"
    recovered = rec_dir / "model"
    if "recover" in stages:
        from tracenas.recover import RecoverConfig, recover
        from tracenas.recover import is_done as recover_done

        if recover_done(rec_dir):
            log.info("recover: complete, skipped")
        else:
            from tracenas.export.checkpoint import is_done as export_done
            from tracenas.models.defaults import DEFAULT_MODEL

            if not export_done(out):
                raise TracenasError(f"recover needs the exported model in {model_dir}; run the export stage")
            t = time.perf_counter()
            rc = RecoverConfig(model=str(model_dir), data=cfg.data, preset=cfg.preset, tokens=cfg.recover_tokens,
                               seq_len=cfg.recover_seq_len, lr=cfg.recover_lr, seed=cfg.seed, out=str(rec_dir),
                               dtype=cfg.recover_dtype, distill=cfg.distill,
                               teacher=(cfg.model or DEFAULT_MODEL) if cfg.distill else None,
                               resume=(rec_dir / "checkpoints").exists())
            recover(rc, progress=progress)
            timings["recover"] = time.perf_counter() - t

    if cfg.gguf:
        _write_gguf(cfg.gguf, recovered if (recovered / "config.json").exists() else model_dir, timings)

    if "eval" in stages:
        _eval_stage(cfg, out, model_dir, recovered, progress, timings)

    if "bench" in stages:
        from tracenas.bench import runner as bench_stage

        if bench_stage.is_done(out):
            log.info("bench: complete, skipped")
        else:
            from tracenas.bench.runner import BenchConfig, run_bench
            from tracenas.models.defaults import DEFAULT_MODEL

            target = recovered if (recovered / "config.json").exists() else model_dir
            if (target / "config.json").exists():
                t = time.perf_counter()
                run_bench(target, BenchConfig(base=cfg.model or DEFAULT_MODEL, out=str(out / "bench.json"),
                                              prompt_len=cfg.bench_prompt_len, gen_len=cfg.bench_gen_len,
                                              trials=cfg.bench_trials, device=cfg.device, seed=cfg.seed))
                timings["bench"] = time.perf_counter() - t

    prev = {}
    if (out / "run_timings.json").exists():
        prev = json.loads((out / "run_timings.json").read_text())
    prev.update({k: round(v, 2) for k, v in timings.items()})
    atomic_write_json(out / "run_timings.json", prev)
    from tracenas.pipeline.report import write_report

    return write_report(out)
