"""`run_search(cfg)`: model + data -> arch.json, history.jsonl, resumable state, plots.

    from tracenas.search.config import SearchConfig
    from tracenas.search.recipes.runner import run_search
    result = run_search(SearchConfig(preset="quick", budget="0.6", out="runs/demo"))

Run directory: the files of `tracenas.search.store` (search.yaml, arch.json, history.jsonl, search.log,
search/state.json, search/timings.jsonl, search/summary.json), search/anchor.safetensors (importance and base
traces, reused by --resume) and the plots (search/progress.png: best/mean score per generation;
search/arch.png: per-layer retention).

Under `torchrun --nproc-per-node N -m tracenas search ...` every generation's new candidates are split
over the ranks (`tracenas.runtime.distributed.map_ranks`) and the scores all-gathered, so every rank holds the
same state; only rank 0 reads or writes the run directory (resume: rank 0 reads it and broadcasts).
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

import torch

from tracenas.arch import ArchFile, Genome, SearchSpace
from tracenas.runtime.config import format_count, json_float, save_config
from tracenas.runtime.device import resolve_device, resolve_dtype, using_threads
from tracenas.runtime.distributed import Dist, init_dist, map_ranks, rank_device
from tracenas.runtime.errors import RunDirError, TracenasError
from tracenas.runtime.logs import run_log
from tracenas.runtime.rundir import RunDirGuard
from tracenas.prune.anchor import ANCHOR, load_anchor, save_anchor
from tracenas.prune.masking import Importance, compute_importance, select, selection_to_list
from tracenas.proxies.traces import Scorer, TraceProbes
from tracenas.proxies.registry import get_proxy
from tracenas.search.config import SearchConfig
from tracenas.search.registry import strategy_class
from tracenas.search import store
from tracenas.search.store import STATE, SearchStore, refuse_existing, saved_candidates, saved_config
from tracenas.search.strategies.state import Candidate
from tracenas.search.strategies.base import SearchStrategy, Strategy, StrategyState

log = logging.getLogger(__name__)
T = TypeVar("T")

RANKS = ".ranks"  # under torchrun, rank r > 0 of a `rank_dirs` recipe writes its own copy of the run in OUT/.ranks/rank-r


@dataclass
class SearchResult:
    out: Path
    best: Candidate
    budget: int
    base_params: int
    candidates_scored: int
    seconds: float


def resume_config(cfg: SearchConfig, out: Path) -> SearchConfig:
    """`cfg` for resuming the search in `out`: options left unset (None) come from the saved config; a set
    option that differs from it is refused, so a resume never silently changes the search it continues."""
    if not SearchStore(out).has_state():
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


def run_search(cfg: SearchConfig, *, progress: bool = True, model=None, tokenizer=None, source=None) -> SearchResult:
    """Run (or resume) a search; everything it produces lands in `cfg.out`."""
    from tracenas import data as data_mod
    from tracenas.models.loading import resolve_source

    out = Path(cfg.out).expanduser()
    recipe_cls = recipe_class(cfg.strategy)
    dist = init_dist()
    own_dirs = recipe_cls.rank_dirs and dist.world > 1
    if own_dirs and not dist.is_main:  # this rank keeps a run directory of its own, apart from rank 0's
        out, progress = out / RANKS / f"rank-{dist.rank}", False
    resuming = cfg.resume
    # the run directory is read and prepared by its writer: each rank for its own, else rank 0 for everyone
    by_writer = (lambda fn: fn()) if own_dirs else dist.run_on_main
    try:
        if resuming:  # the saved config, read by the writer (without rank_dirs, every rank gets rank 0's)
            cfg = by_writer(lambda: resume_config(cfg, out))
        else:
            cfg = cfg.resolved()
            by_writer(lambda: refuse_existing(out))
        if model is None:
            resolve_source(cfg.model)  # a missing model path fails here, before the run directory is touched
        data_mod.check_source(cfg.data)
        guard = (RunDirGuard(out, resumable=lambda: saved_candidates(out) > 0) if recipe_cls.writes_run_dir(dist)
                 else nullcontext())
        with guard:
            recipe = recipe_cls(cfg, out, resuming, progress=progress, model=model, tokenizer=tokenizer,
                                source=source, dist=dist)
            return recipe.run()
    finally:
        dist.close()


def recipe_class(strategy: str) -> "type[SearchRecipe]":
    """The recipe a strategy runs in: `SearchRecipe`, or the one its class names in `recipe` ("module:Class",
    e.g. darwinlm's, which scores through a sparsity database and fine-tuning instead of a `Scorer`)."""
    path = getattr(strategy_class(strategy), "recipe", None)
    if path is None:
        return SearchRecipe
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


class SearchRecipe:
    """One search run as named steps (torchtune's recipe shape), so a variant overrides one step:

    `setup` (`_setup_model`, `_setup_space`, `_setup_data`, `_setup_scorer`, `_setup_strategy`, then
    `resume` or `_fresh_outputs`) -> `search` (one `step` per generation; the strategy's hooks write
    history.jsonl, timings and search/state.json) -> `finalize` (arch.json, summary, plots). Every file goes
    through `self.store` (`tracenas.search.store.SearchStore`).
    """

    # Under torchrun only rank 0 writes the run directory; a recipe with `rank_dirs` has every rank write one
    # (rank r > 0 in OUT/.ranks/rank-r, which its own --resume reads).
    rank_dirs = False

    @classmethod
    def writes_run_dir(cls, dist: Dist) -> bool:
        """Whether this rank writes a run directory: rank 0 always, every rank for a `rank_dirs` recipe."""
        return dist.is_main or cls.rank_dirs

    def __init__(self, cfg: SearchConfig, out: Path, resuming: bool, *, progress: bool = True, model=None,
                 tokenizer=None, source=None, dist: Dist | None = None) -> None:
        self.dist = dist or Dist()
        self.main = self.writes_run_dir(self.dist)
        self.cfg, self.out, self.resuming, self.progress = cfg, out, resuming, progress and self.main
        self.model, self.tokenizer, self.source = model, tokenizer, source
        self.store = SearchStore(out)
        self.strategy: Strategy
        self.probes: TraceProbes | None = None
        self.bar = None

    def run(self) -> SearchResult:
        with run_log(self.out, "search") if self.main else nullcontext(), using_threads(self.cfg.threads):
            self.t_start = time.perf_counter()
            self.setup()
            return self.finalize(self.search())

    # --- setup -----------------------------------------------------------------------------------
    def setup(self) -> None:
        self._setup_model()
        self._setup_space()
        self._setup_data()
        self._setup_scorer()
        self._setup_strategy()
        if self.resuming:
            self.resume()
        else:
            self._fresh_outputs()

    def _setup_model(self) -> None:
        from tracenas.models import get_adapter, load_model

        self.device = rank_device(resolve_device(self.cfg.device), self.dist)
        self.dtype = resolve_dtype(self.cfg.dtype, self.device)
        if self.model is None:
            self.model, self.tokenizer, self.source = load_model(self.cfg.model, dtype=self.dtype, device=self.device,
                                                                 tie_embeddings=self.cfg.tie_embeddings)
        self.adapter = get_adapter(self.model)
        if self.cfg.activation_checkpointing:
            from tracenas.prune.memory import checkpoint_blocks

            checkpoint_blocks(self.adapter)
        if self.cfg.compile:  # dynamic parameter shapes and a higher recompile limit (docs/scale.md)
            from tracenas.prune.sliced import compile_blocks

            compile_blocks(self.adapter)

    def _setup_space(self) -> None:
        """Search space, budget and `min_layers` (resolved from the model); saves search.yaml on a new run."""
        cfg, shape = self.cfg, self.adapter.shape()
        min_layers = cfg.min_layers if cfg.min_layers is not None else max(1, shape.num_layers // 2)
        self.space = SearchSpace(shape, min_layers=min_layers, include_embeddings=cfg.include_embeddings,
                                 metric=cfg.budget_metric())
        self.budget = self.space.resolve_budget(cfg.budget_value())
        self.cfg = dataclasses.replace(cfg, min_layers=min_layers)
        if not self.resuming and self.main:  # a resume writes search.yaml only once the saved state has loaded
            save_config(self.out, "search", self.cfg)
        log.info("budget %s of %s %s (%s), %d blocks, min_layers=%d", format_count(self.budget),
                 format_count(self.space.base_cost()), self.space.metric.unit,
                 "embeddings included" if cfg.include_embeddings else "embeddings excluded", shape.num_layers,
                 min_layers)

    def _setup_data(self) -> None:
        from tracenas import data as data_mod

        cfg = self.cfg
        # the document split is always split seed 0, whatever --seed: the eval split every model is measured on
        # must never be calibration text of another seed's search
        self.batches = data_mod.token_batches(self.tokenizer, cfg.data, split="calibration",
                                              num_sequences=cfg.num_sequences, seq_len=cfg.seq_len)

    def _setup_scorer(self) -> None:
        """Importance (or the saved anchor on resume), base traces for gradient proxies, and the Scorer."""
        cfg, out, resuming, device, batches = self.cfg, self.out, self.resuming, self.device, self.batches
        model, adapter, space = self.model, self.adapter, self.space
        torch.manual_seed(cfg.seed)
        probes = None
        anchor_path = out / ANCHOR
        needs_probes = get_proxy(cfg.proxy).method.needs_probes
        holder: dict[str, TraceProbes] = {}

        def anchor() -> tuple[Importance, dict | None]:
            """Rank 0: importance and base traces (or the saved anchor on resume), saved to the run directory."""
            base = None
            if resuming and anchor_path.exists():
                importance, base = load_anchor(anchor_path)
                base = {k: v.to(device) for k, v in base.items()} or None
            else:
                log.info("importance pass over %d x %d calibration tokens", *batches.shape)
                importance = compute_importance(model, adapter, batches, micro_batch=cfg.micro_batch)
            if needs_probes:
                holder["probes"] = TraceProbes(model, adapter, rank=cfg.rank, seed=cfg.seed)
                if base is None:
                    log.info("base gradient traces (rank %d)", cfg.rank)
                    base, base_loss = holder["probes"].trace(batches, cfg.micro_batch, cfg.loss_chunk)
                    log.info("base calibration loss %.4f", base_loss)
            save_anchor(anchor_path, importance, base)
            # several ranks: CPU tensors travel (a pickled CUDA tensor would land on rank 0's GPU)
            return _anchor_to_cpu(importance, base) if self.dist.world > 1 else (importance, base)

        # one anchor for all ranks: rank 0's, so every rank scores against the same base
        importance, base = self.dist.run_on_main(anchor)
        if self.dist.world > 1 and base is not None:
            base = {k: v.to(device) for k, v in base.items()}
        if needs_probes:
            probes = holder.get("probes") or TraceProbes(model, adapter, rank=cfg.rank, seed=cfg.seed)
        scorer = Scorer(model, adapter, space, importance, batches, cfg.proxy, probes, base,
                        micro_batch=cfg.micro_batch, loss_chunk=cfg.loss_chunk, score_on=cfg.score_on)
        self.importance, self.probes, self.scorer = importance, probes, scorer

    def _setup_strategy(self) -> None:
        cls = strategy_class(self.cfg.strategy)
        self.strategy: SearchStrategy = cls(cls.config_from(self.cfg), self.space, self.budget, self.scorer.score,
                                            prior=(self.importance.attn_prior(), self.importance.mlp_prior()),
                                            score_batch=self.score_batch)
        self.strategy.on_scored, self.strategy.on_generation = self._on_scored, self._on_generation

    def score_batch(self, genomes: list[Genome]):
        """Scores of `genomes` in order (the strategy's `score_batch`): spread over the ranks of a torchrun job,
        balanced by kept parameters (a sliced candidate costs what it keeps)."""
        return map_ranks(self.scorer.score, genomes, self.dist, costs=[self.space.params(g) for g in genomes])

    def resume(self) -> None:
        """Load search/state.json (read where the run directory is read, see `by_writer`; every rank loads it),
        drop history/timing records the saved state does not know, and record the config again."""
        self.strategy.load_state_dict(self.by_writer(self.store.read_state))
        state = self.strategy.state
        if self.main:
            self.store.truncate(state.history_len)
            save_config(self.out, "search", dataclasses.replace(self.cfg, resume=False))  # records an extended --iterations
        self._resumed(state)

    def by_writer(self, read: Callable[[], T]) -> T:
        """`read()` of the run directory: this rank's own for a `rank_dirs` recipe, else rank 0's for every rank."""
        return read() if self.rank_dirs else self.dist.run_on_main(read)

    def _resumed(self, state: StrategyState) -> None:
        """After a resume: say where the search continues."""
        pending = self.strategy.state.pending
        at = "" if pending is None else f", {len(pending)} proposed for generation {state.generation}"
        log.info("resuming after generation %d (%d candidates scored%s)", state.generation, state.history_len, at)

    def _fresh_outputs(self) -> None:
        if self.main:
            self.store.clear()

    # --- search ----------------------------------------------------------------------------------
    def search(self) -> Candidate | None:
        """Run generations until the strategy is done; the best candidate ever scored."""
        self.bar = _progress(self.strategy.planned_candidates(), self.strategy.state.history_len, self.progress)
        t0, done_before = time.perf_counter(), self.strategy.state.history_len
        try:
            while not self.strategy.done():
                self.step()
        finally:  # also on an error, so that its message starts on a line of its own
            if self.bar is not None:
                self.bar.close()
        self.scoring = (time.perf_counter() - t0, self.strategy.state.history_len - done_before)
        if self.probes is not None:
            self.probes.remove()
        return self.strategy.best()

    def step(self) -> None:
        self.strategy.step()

    def _on_scored(self, cand: Candidate, generation: int, info: dict) -> None:
        if not self.main:
            return
        state = self.strategy.state
        rec = {"index": state.history_len - 1, "generation": generation, "score": json_float(cand.score),
               "params": cand.params, "loss": json_float(info.get("loss")), "genome": cand.genome.to_dict()}
        for k in ("rho_attn", "rho_mlp"):
            if k in info:
                rec[k] = [None if x is None else round(x, 6) for x in info[k]]
        self.store.append(rec, {"index": rec["index"], "seconds": round(info.get("seconds", 0.0), 4)})
        if state.pending is not None:  # last, so the saved state never counts a record not yet written
            self.store.write_state(self.strategy.state_dict())
        if self.bar is not None:
            best = max((s for s in state.scores.values() if s > float("-inf")), default=float("nan"))
            self.bar.update(1)
            self.bar.set_postfix(gen=generation, best=f"{best:.4f}", last=f"{cand.score:.4f}")

    def _on_generation(self, state: StrategyState) -> None:
        if self.main:
            self.store.write_state(self.strategy.state_dict())
            self._write_arch(self.strategy.best())
        log.info("generation %d/%d: best %.4f mean %.4f", state.generation, self.strategy.generations,
                 state.best_per_generation[-1], state.mean_per_generation[-1])

    # --- finalize --------------------------------------------------------------------------------
    def finalize(self, best: Candidate | None) -> SearchResult:
        """arch.json of the best candidate, search/summary.json, the plots."""
        if best is None:
            raise TracenasError("every candidate scored -inf (non-finite loss); see search.log")
        seconds = time.perf_counter() - self.t_start
        state = self.strategy.state
        if not self.main:
            return SearchResult(self.out, best, self.budget, self.space.base_params(), state.history_len, seconds)
        self._write_arch(best)
        self.store.write_summary(self._summary(seconds))
        try:
            from tracenas.search.plots import plot_search

            plot_search(self.out)
        except Exception as err:  # noqa: BLE001 - a plot must never fail a finished search
            log.warning("could not draw search plots: %s", err)
        log.info("best %s: score %.4f, %s parameters", self.cfg.proxy, best.score, format_count(best.params))
        return SearchResult(self.out, best, self.budget, self.space.base_params(), state.history_len, seconds)

    def _summary(self, seconds: float) -> dict:
        """search/summary.json: the cost of the search."""
        state = self.strategy.state
        return {"candidates_scored": state.history_len, "rejected_draws": state.rejected,
                "calibration_tokens": int(self.batches.numel()), "wall_seconds_this_session": round(seconds, 2),
                "device": str(self.device), "dtype": str(self.dtype).replace("torch.", ""),
                "threads": torch.get_num_threads(), "ranks": self.dist.world,
                "score_on": getattr(getattr(self, "scorer", None), "score_on", None),
                # the generations alone (no loading, no base pass): what candidates/s is measured on
                "scoring_seconds_this_session": round(self.scoring[0], 3) if hasattr(self, "scoring") else None,
                "candidates_this_session": self.scoring[1] if hasattr(self, "scoring") else None}

    def _write_arch(self, best: Candidate | None) -> None:
        """arch.json of the best candidate so far (none: nothing yet)."""
        if best is not None:
            self._save_arch(best, self.cfg.proxy, selection_to_list(select(self.space, best.genome, self.importance)))

    def _save_arch(self, best: Candidate, proxy: str | None, selection: list, details: dict | None = None,
                   more: dict | None = None) -> None:
        """Write arch.json: the model (source, shape), `best`'s architecture and score, its `selection` (the
        heads and channels export keeps), a strategy's `details` (a level search's levels and database), the
        budget settings and the strategy, then `more` (a strategy's own keys)."""
        cfg, space = self.cfg, self.space
        model_info = self.source.as_dict() if self.source is not None else {"spec": cfg.model}
        model_info["shape"] = space.shape.as_dict()
        if cfg.tie_embeddings:  # only when set, so that existing arch.json files stay as they were
            model_info["tie_embeddings"] = True
        extra = {"selection": selection, **(details or {}), "budget_tolerance": cfg.budget_tolerance,
                 "include_embeddings": cfg.include_embeddings, "min_layers": space.min_layers,
                 "strategy": cfg.strategy, **(more or {})}
        self.store.write_arch(ArchFile(model=model_info, arch=space.to_arch_dict(best.genome),
                                       score=json_float(best.score), proxy=proxy, budget=self.budget, extra=extra))


def _anchor_to_cpu(importance: Importance, base: dict | None) -> tuple[Importance, dict | None]:
    return importance, ({k: v.cpu() for k, v in base.items()} if base is not None else None)


def _progress(total: int, done: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, desc="search", unit="cand", dynamic_ncols=True)


def is_done(out: str | os.PathLike, cfg: SearchConfig | None = None) -> bool:
    """The stage contract: whether the search in `out` has finished (with `cfg`: every generation its strategy
    runs, extended searches included)."""
    generations = None if cfg is None else strategy_class(cfg.strategy).config_from(cfg.resolved()).total_generations
    return store.is_done(out, generations)


def run(cfg: SearchConfig, *, progress: bool = True) -> SearchResult:
    """The stage contract's entry point: run the search, resuming what `cfg.out` already holds."""
    return run_search(dataclasses.replace(cfg, resume=saved_candidates(Path(cfg.out)) > 0), progress=progress)


# the search stage's entry points: `run_search`, and (from `search.store`) what the pipeline and CLI ask of a run dir
__all__ = ["SearchRecipe", "SearchResult", "is_done", "recipe_class", "resume_config", "run", "run_search",
           "saved_candidates", "saved_config", "Genome"]
