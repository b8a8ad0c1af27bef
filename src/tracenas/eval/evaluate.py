"""Evaluate a (pruned, recovered, or any) causal LM: held-out perplexity and downstream tasks.

    tracenas eval runs/demo/recovered/model --out runs/demo/eval
    tracenas eval runs/demo/model --tasks local:questions.jsonl         # offline multiple choice
    tracenas eval runs/demo/model --preset paper --out ...              # the paper's suite (network)

Perplexity: the `eval` split of `--data` (documents never used for calibration or training) is
tokenized into one stream (documents joined by EOS) and cut into consecutive non-overlapping windows
of `ppl_seq_len` tokens, at most `ppl_max_tokens` tokens in all (a shorter last window is kept). Each
window is scored independently (no context carried across windows); every token but a window's
first is predicted, and ppl = exp(sum of NLL / number of predicted tokens).

Downstream tasks go through lm-evaluation-harness with the in-memory model (`HFLM(pretrained=model)`),
see `tracenas.eval.tasks` for the names accepted by `--tasks` and the local JSONL format.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections import defaultdict
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tracenas.runtime.config import atomic_write_json, save_config, to_dict
from tracenas.eval.config import PRESETS, EvalConfig
from tracenas.runtime.device import using_threads
from tracenas.runtime.logs import run_log
from tracenas.runtime.rundir import RunDirGuard, check_writable_dir
from tracenas.runtime.errors import TracenasError
from tracenas.runtime.perplexity import perplexity
from tracenas.eval.tasks import TaskSpec, network_available, parse_tasks, set_offline, write_local_task

log = logging.getLogger(__name__)

_METRICS = ("acc", "acc_norm")


# --------------------------------------------------------------------------- perplexity


def eval_tokens(tokenizer, data: str | None, max_tokens: int | None, split: str = "eval") -> torch.Tensor:
    """The eval split of `data` (or, `split="all"`, every document of it) as one token stream, cut to
    `max_tokens` (0/None: all of it)."""
    from tracenas.data import load_documents, load_split, token_stream

    docs = load_documents(data) if split == "all" and data is not None else load_split(data, "eval")
    stream = token_stream(tokenizer, docs)
    return stream[:max_tokens] if max_tokens else stream


# --------------------------------------------------------------------------- downstream tasks


def _require_lm_eval() -> None:
    try:
        import lm_eval  # noqa: F401 - cheap: the package imports its submodules lazily
    except ImportError:
        raise TracenasError("downstream tasks need lm-evaluation-harness: pip install 'tracenas[eval]'") from None


def _explain(err: Exception, spec: TaskSpec, online: bool) -> TracenasError:
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    if isinstance(err, KeyError) and "not a registered" in text:
        return TracenasError(f"unknown lm-eval task {spec.name!r} (list them with `lm-eval ls tasks`; local files "
                             "are passed as local:FILE.jsonl)")
    name = type(err).__name__
    if not online and (isinstance(err, (ConnectionError, OSError)) or "Offline" in text or "Offline" in name):
        return TracenasError(f"task {spec.name!r} needs its dataset from the Hugging Face Hub, which is not reachable "
                             "(offline), and the dataset is not in the local cache: run once with network, or use "
                             "--tasks local:FILE.jsonl (see docs/evaluation.md)")
    return TracenasError(f"lm-eval could not load task {spec.name!r}: {name}: {text}")


def _task_manager(specs: list[TaskSpec], directory: Path, online: bool):
    """A TaskManager that knows the local tasks; every task is loaded once here so that unknown names and
    unreachable datasets fail before the model is loaded."""
    from lm_eval.tasks import TaskManager

    for spec in specs:
        if not spec.remote:
            write_local_task(spec, directory)
    remote = any(s.remote for s in specs)
    manager = TaskManager(include_path=str(directory), include_defaults=remote)  # the full index takes seconds
    for spec in specs:
        try:
            manager.load([spec.name])
        except Exception as err:  # lm-eval/datasets raise many types; each becomes one line
            raise _explain(err, spec, online) from err
    return manager


def _metric(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def run_tasks(model: nn.Module, tokenizer, specs: list[TaskSpec], cfg: EvalConfig, manager) -> tuple[dict, dict]:
    """Evaluate `specs` with lm-eval; returns (per-task summary, lm-eval's raw results)."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=cfg.batch_size, backend="causal")
    limit = None if cfg.limit is None else (int(cfg.limit) if cfg.limit >= 1 else cfg.limit)
    by_shots: dict[int | None, list[TaskSpec]] = defaultdict(list)
    for spec in specs:
        by_shots[spec.num_fewshot].append(spec)
    summary: dict[str, dict] = {}
    raw: dict[str, dict] = {"results": {}, "n-shot": {}, "n-samples": {}, "versions": {}}
    for shots, group in by_shots.items():
        out = lm_eval.simple_evaluate(
            model=lm, tasks=[s.name for s in group], num_fewshot=shots, limit=limit, task_manager=manager,
            bootstrap_iters=cfg.bootstrap_iters, log_samples=False, random_seed=cfg.seed,
            numpy_random_seed=cfg.seed, torch_random_seed=cfg.seed, fewshot_random_seed=cfg.seed)
        for key, merged in raw.items():
            merged.update(out.get(key) or {})
        for spec in group:
            res = out["results"].get(spec.name, {})
            entry: dict[str, Any] = {"num_fewshot": out.get("n-shot", {}).get(spec.name, shots),
                                     "source": spec.path or "lm-eval"}
            for metric in _METRICS:
                if f"{metric},none" in res:
                    entry[metric] = _metric(res[f"{metric},none"])
                    entry[f"{metric}_stderr"] = _metric(res.get(f"{metric}_stderr,none"))
            samples = out.get("n-samples", {}).get(spec.name)
            entry["samples"] = samples.get("effective") if isinstance(samples, dict) else None
            summary[spec.name] = entry
    return summary, raw


# --------------------------------------------------------------------------- the command


def model_info(model: nn.Module, source=None) -> dict[str, Any]:
    """Parameter counts (embeddings included, as the paper counts; tied weights once) and identity."""
    params = sum(p.numel() for p in model.parameters())
    embeddings = {id(m.weight): m.weight.numel() for m in (model.get_input_embeddings(), model.get_output_embeddings())
                  if m is not None}
    cfg = model.config
    first = next(model.parameters())
    return {
        "spec": source.spec if source is not None else None,
        "path": source.path if source is not None else None,
        "gguf_file": source.gguf_file if source is not None else None,
        "model_type": getattr(cfg, "model_type", None),
        "pruned": bool(getattr(cfg, "tracenas", None)),
        "params": params,
        "params_non_embedding": params - sum(embeddings.values()),
        "layers": getattr(cfg, "num_hidden_layers", None),
        "dtype": str(first.dtype).removeprefix("torch."),
        "device": str(first.device),
    }


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("tracenas", "torch", "transformers", "lm_eval"):
        try:
            out[pkg] = version(pkg.replace("_", "-"))
        except PackageNotFoundError:
            out[pkg] = None
    return out


def is_done(out: str | os.PathLike, cfg: EvalConfig | None = None) -> bool:
    """Whether an evaluation wrote its results to `out` (with `cfg`: to `cfg.out`)."""
    return (Path(cfg.out if cfg is not None and cfg.out else out) / "results.json").is_file()


def evaluate(cfg: EvalConfig, *, model: nn.Module | None = None, tokenizer=None, progress: bool = True) -> dict:
    """Perplexity and downstream accuracy per `cfg`; with `cfg.out`, writes OUT/results.json, eval.yaml and
    eval.log (a failure leaves no half-made OUT behind)."""
    cfg = cfg.resolved()
    if not cfg.out:
        with using_threads(cfg.threads):
            return _evaluate(cfg, model, tokenizer, progress)
    out = check_writable_dir(cfg.out)
    with RunDirGuard(out), run_log(out, "eval"), using_threads(cfg.threads):
        return _evaluate(cfg, model, tokenizer, progress)


def _evaluate(cfg: EvalConfig, model: nn.Module | None, tokenizer, progress: bool) -> dict:
    from tracenas.models.loading import load_model, resolve_source

    start = time.perf_counter()
    specs = parse_tasks(cfg.tasks, cfg.num_fewshot)  # local files are checked before anything slow
    if not cfg.ppl and not specs:
        raise TracenasError("nothing to evaluate: perplexity is off (--ppl false) and no --tasks were given")
    online = True
    if specs:
        _require_lm_eval()
        online = not cfg.offline and network_available()
        if not online:
            set_offline()  # datasets/hub: cache only, fail at once instead of retrying for minutes
    with tempfile.TemporaryDirectory(prefix="tracenas-tasks-") as tmp:
        task_dir = Path(cfg.out) / "tasks" if cfg.out and any(not s.remote for s in specs) else Path(tmp)
        task_dir.mkdir(parents=True, exist_ok=True)  # kept with --out: stock lm-eval can rerun the local tasks
        manager = _task_manager(specs, task_dir, online) if specs else None
        source = None
        if model is None:
            source = resolve_source(cfg.model)
            from tracenas.runtime.device import resolve_device, resolve_dtype

            device = resolve_device(cfg.device)
            dtype = resolve_dtype(cfg.dtype, device)
            model, loaded_tok, source = load_model(cfg.model, dtype=dtype, device=device)
            tokenizer = tokenizer or loaded_tok
        if tokenizer is None:
            raise TracenasError("evaluate() needs a tokenizer with an in-memory model")
        model.eval()
        results: dict[str, Any] = {"model": model_info(model, source)}
        if cfg.ppl:
            seq_len = cfg.ppl_seq_len
            context = getattr(model.config, "max_position_embeddings", None)
            if context and seq_len > context:
                log.warning("--ppl-seq-len %d exceeds the model's context (%d): using %d", seq_len, context, context)
                seq_len = context
            split = cfg.ppl_split
            stream = eval_tokens(tokenizer, cfg.data, cfg.ppl_max_tokens, split)
            ppl = perplexity(model, stream, seq_len, cfg.micro_batch, progress=progress)
            ppl.update(data=cfg.data or "wikipedia", split=split, max_tokens=cfg.ppl_max_tokens,
                       method=f"non-overlapping windows over the concatenated {split} split; exp(token-weighted "
                              "mean NLL)")
            results["perplexity"] = ppl
            log.info("perplexity %.3f over %s tokens", ppl["ppl"], f"{ppl['tokens']:,}")
        raw = None
        if specs:
            results["tasks"], raw = run_tasks(model, tokenizer, specs, cfg, manager)
    results["config"] = to_dict(cfg)
    results["versions"] = _versions()
    results["wall_time_s"] = time.perf_counter() - start
    if cfg.out:
        out = Path(cfg.out)
        save_config(out, "eval", cfg)
        if raw is not None:
            atomic_write_json(out / "lm_eval_results.json", raw)
        atomic_write_json(out / "results.json", results)
    return results


def format_results(results: dict) -> str:
    """A plain-text table of `evaluate`'s results (the CLI prints it)."""
    info = results["model"]
    pruned = ", pruned" if info["pruned"] else ""
    lines = [f"model: {info.get('spec') or 'in-memory'} ({info['model_type']}, {info['params']:,} parameters{pruned})"]
    rows = [("task", "shots", "metric", "value", "stderr")]
    if "perplexity" in results:
        p = results["perplexity"]
        rows.append((f"perplexity ({p['data']}/{p.get('split', 'eval')})", "-", f"ppl@{p['seq_len']}", f"{p['ppl']:.3f}",
                     f"{p['tokens']:,} tok"))
    for name, entry in results.get("tasks", {}).items():
        for metric in _METRICS:
            if metric in entry:
                value, err = entry[metric], entry.get(f"{metric}_stderr")
                rows.append((name, str(entry.get("num_fewshot", "-")), metric,
                             "-" if value is None else f"{value:.4f}", "-" if err is None else f"±{err:.4f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    fmt = "  ".join(f"{{:{'<' if i < 3 else '>'}{w}}}" for i, w in enumerate(widths))
    lines.append(fmt.format(*rows[0]))
    lines.append("  ".join("-" * w for w in widths))
    lines.extend(fmt.format(*r) for r in rows[1:])
    return "\n".join(lines)


__all__ = ["PRESETS", "EvalConfig", "eval_tokens", "evaluate", "format_results", "model_info", "perplexity",
           "run_tasks"]
