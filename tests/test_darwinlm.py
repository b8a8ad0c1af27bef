"""`--strategy darwinlm`: mutation, budget window, multistep selection, kill/resume, ranks, sliced fine-tuning,
export of database levels."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny, make_tiny_tokenizer, run_killed

from tracenas.arch import Levels, SearchSpace
from tracenas.prune.database import DatabaseSpec, LevelAssembler, SparsityDatabase, build_database, levels_to_genome
from tracenas.runtime.errors import TracenasError
from tracenas.models import get_adapter
from tracenas.search.config import SearchConfig
from tracenas.search.strategies.darwinlm import DarwinLMConfig, DarwinLMSearch
from tracenas.search.strategies.levels import LevelSpace, StageTask, mutate, select_best, uniform_start
from tracenas.search.recipes.runner import run_search

TINY = dict(strategy="darwinlm", num_sequences=4, seq_len=32, offspring=4, survivors="2,1", stage_tokens="40,64",
            finetune_tokens="32,64", iterations=3, budget="0.7", budget_tolerance=0.1, min_layers=2, database_levels=4,
            threads=1)
SRC = str(Path(__file__).resolve().parents[1] / "src")


def level_space(num_layers: int = 8, budget: float = 0.6, tol: float = 0.05):
    space = SearchSpace(get_adapter(make_tiny("llama-gqa", num_layers=num_layers)).shape(), min_layers=2)
    spec = DatabaseSpec.default(space, 4)
    ls = LevelSpace(space, spec.attn_units, spec.mlp_widths)
    b = space.resolve_budget(budget)
    return ls, b, (int(np.floor(b * (1 - tol))), b)


def test_mutation_keeps_levels_valid_and_offspring_in_the_window():
    ls, budget, (lo, hi) = level_space()
    parent = uniform_start(ls, (lo, hi))
    assert lo <= ls.cost(parent) <= hi and ls.valid(parent)
    rng = np.random.default_rng(0)
    for _ in range(300):  # a level switch moves one sub-block up and one of the same type down
        child = mutate(parent, ls, rng)
        assert sum(child.attn) == sum(parent.attn) and sum(child.mlp) == sum(parent.mlp)
        assert all(0 <= k <= ls.top_of(i, "attn") for i, k in enumerate(child.attn))
        assert all(0 <= k <= ls.top_of(i, "mlp") for i, k in enumerate(child.mlp))
        assert sum(abs(a - b) for a, b in zip(child.attn + child.mlp, parent.attn + parent.mlp)) <= 6
    search = DarwinLMSearch(DarwinLMConfig(offspring=16, budget_tolerance=0.05), ls, budget, lambda b, t: [])
    for _ in range(20):
        kids = search.offspring()
        assert len(kids) == 16 and len(set(kids)) == 16 and parent not in kids
        for kid in kids:  # mutation alone may leave the window (level sizes differ); offspring never do
            assert ls.valid(kid) and lo <= ls.cost(kid) <= hi
            assert ls.cost(kid) == ls.space.cost(ls.genome(kid))
        search.state.parent = kids[0]  # walk on, so the window is tested away from the start too
        parent = kids[0]
    with pytest.raises(TracenasError):
        DarwinLMConfig(survivors=(8, 4, 2), eval_tokens=(1, 2, 3), train_tokens=(0, 0, 0))


def test_levels_genome_matches_the_database(tmp_path):
    model = make_tiny("llama-gqa")
    adapter = get_adapter(model)
    space = SearchSpace(adapter.shape())
    db = build_database(model, adapter, make_tiny_tokenizer(), tmp_path / "db",
                        DatabaseSpec.default(space, 4, sequences=2, seq_len=32), progress=False)
    ls = LevelSpace(space, db.attn_units, db.mlp_widths)
    levels = Levels((0, 1, 3, 3), (2, 0, 3, 1))
    assert ls.genome(levels) == levels_to_genome(db, space, levels)
    assert ls.genome(levels).keep == (True, True, False, True)


def test_selection_keeps_the_best_at_every_stage_and_the_parent_reenters_last():
    ls, budget, _ = level_space()
    calls = []

    def evaluate(batch, task):  # a fitness that depends on the stage: stages must re-rank
        out = [(float(-((sum(lv.attn) * 7 + sum(k * (i + 1) for i, k in enumerate(lv.mlp))) % (13 + task.stage))),
                {}) for lv in batch]
        calls.append((task.stage, list(batch), [f for f, _ in out]))
        return out

    cfg = DarwinLMConfig(offspring=8, survivors=(4, 2, 1), eval_tokens=(8, 16, 32), train_tokens=(0, 0, 0),
                         iterations=3, budget_tolerance=0.05)
    search = DarwinLMSearch(cfg, ls, budget, evaluate)
    for gen in range(3):
        parent = search.parent()
        search.step()
        stages = calls[-3:]
        assert [s for s, _, _ in stages] == [0, 1, 2]
        assert len(stages[0][1]) == 8 and parent not in stages[0][1]
        for (s, batch, fit), (_, nxt, _) in zip(stages, stages[1:]):
            best = [batch[i] for i in sorted(range(len(fit)), key=lambda i: (-fit[i], i))[:cfg.survivors[s]]]
            assert nxt[:len(best)] == best  # the survivors are exactly the best of the stage
        last_batch, last_fit = stages[2][1], stages[2][2]
        assert last_batch[-1] == parent and len(last_batch) == 3  # 2 survivors + the parent
        winner = last_batch[select_best(last_fit, 1)[0]]
        assert search.state.parent == winner and search.state.parent_fitness == max(last_fit)
        assert search.state.generation == gen + 1
    assert search.state.history_len == 3 * (8 + 4 + 3) == search.planned_candidates()
    assert select_best([1.0, 3.0, 3.0, 2.0], 2) == [1, 2]


def _strip(history: str) -> list[dict]:
    return [json.loads(line) for line in history.splitlines()]


def test_search_outputs_and_kill_resume_identity(tiny_model_dir, tmp_path):
    full = tmp_path / "full"
    res = run_search(SearchConfig(model=str(tiny_model_dir), out=str(full), **TINY), progress=False)
    arch = json.loads((full / "arch.json").read_text())
    hist = _strip((full / "history.jsonl").read_text())
    assert len(hist) == 3 * (4 + 2 + 1) == res.candidates_scored
    assert {h["stage"] for h in hist} == {0, 1} and sum(h["role"] == "parent" for h in hist) == 3
    assert all(h["eval_tokens"] == (40 if h["stage"] == 0 else 64) for h in hist)
    assert all(h["finetune_tokens"] == (32 if h["stage"] == 0 else 64) for h in hist)
    assert arch["strategy"] == "darwinlm" and arch["database"] == "database" and arch["proxy"] == "kl"
    assert res.budget * 0.9 <= arch["params"] <= res.budget
    cost = arch["search_cost"]
    assert cost["candidate_evaluations"] == 21 and cost["finetune_tokens"] == sum(h["finetune_tokens"] for h in hist)
    assert json.loads((full / "search/summary.json").read_text())["search_cost"]["finetune_tokens"] == 32 * 12 + 64 * 9
    last = [h for h in hist if h["generation"] == 2 and h["stage"] == 1]
    assert arch["levels"] == max(last, key=lambda h: h["score"])["levels"] and arch["score"] == max(h["score"] for h in last)
    for name in ("search/progress.png", "search/arch.png", "search/state.json", "database/manifest.json"):
        assert (full / name).exists(), name

    from tracenas.search.recipes import darwinlm as darwinlm_recipe

    killed = tmp_path / "killed"
    shutil.copytree(full / "database", killed / "database")  # the same database, given with --database
    cfg = {**TINY, "database": str(killed / "database")}
    run_killed(darwinlm_recipe.DarwinLMRecipe, "_evaluate",  # killed mid-generation, after its first stage was saved
               lambda: run_search(SearchConfig(model=str(tiny_model_dir), out=str(killed), **cfg), progress=False),
               when=lambda self, batch, task: task.generation == 1 and task.stage == 1)
    state = json.loads((killed / "search/state.json").read_text())
    assert state["generation"] == 1 and state["pending"]["stage"] == 1
    with open(killed / "history.jsonl", "a") as fh:
        fh.write('{"index": 999}\n')  # a record the saved state does not know
    run_search(SearchConfig(model=str(tiny_model_dir), out=str(killed), resume=True, **cfg), progress=False)
    drop = ("wall_seconds", "candidate_seconds", "database_seconds_this_session")
    a, b = (json.loads((d / "arch.json").read_text()) for d in (full, killed))
    for x in (a, b):
        x.pop("database")
        for k in drop:
            x["search_cost"].pop(k)
    assert a == b
    assert _strip((killed / "history.jsonl").read_text()) == hist
    sa, sb = (json.loads((d / "search/state.json").read_text()) for d in (full, killed))
    for x in (sa, sb):
        for k in drop:
            x["cost"].pop(k, None)
    assert sa == sb


def test_fine_tuned_sliced_candidate_keeps_its_pruned_shape(tmp_path):
    from tracenas.search.recipes.darwinlm_eval import CandidateEvaluator, finetune_

    model = make_tiny("qwen2-mha")  # tied embeddings: the dense head must stay apart from the trained copy's
    adapter = get_adapter(model)
    space = SearchSpace(adapter.shape())
    tok = make_tiny_tokenizer()
    from tracenas.data import token_batches

    db = build_database(model, adapter, tok, tmp_path / "db", DatabaseSpec.default(space, 4, sequences=2, seq_len=32),
                        progress=False)
    calib = token_batches(tok, None, num_sequences=2, seq_len=32)
    train = token_batches(tok, None, split="train", num_sequences=4, seq_len=32)
    ev = CandidateEvaluator(model, adapter, db, calib, train)
    levels = Levels((1, 4, 2, 0), (3, 2, 1, 3))  # block 1: attention removed; blocks 0 and 3: MLP removed
    small, small_adapter = ev.candidate(levels)
    before = {n: p.detach().clone() for n, p in small.named_parameters()}
    shapes = {n: p.shape for n, p in small.named_parameters()}
    assert finetune_(small, small_adapter, train, lr=1e-3, loss_chunk=16) == 4
    assert {n: p.shape for n, p in small.named_parameters()} == shapes
    assert any(not torch.equal(before[n], p) for n, p in small.named_parameters())
    assert sum(p.numel() for p in small.parameters()) == space.params(levels_to_genome(db, space, levels))
    sel = ev.assembler.selection(levels)
    kept = [s for s in sel if s.keep]
    for layer, s in zip(small_adapter.layers(), kept):
        if s.heads:
            assert small_adapter.attn_proj(layer, "q_proj").out_features == len(s.heads) * space.shape.head_dim
        if s.channels:
            assert small_adapter.mlp_proj(layer, "up_proj").out_features == len(s.channels)
    # the dense model is untouched by the training of the copy: its head still gives KL 0 to itself
    dense = ev.evaluate(Levels((0,) * 4, (0,) * 4), StageTask(0, 0, 64, 0, 1e-5, 0))
    assert dense[0] == pytest.approx(0.0, abs=1e-6)
    trained = ev.evaluate(Levels((0,) * 4, (0,) * 4), StageTask(0, 0, 64, 64, 1e-3, 0))
    assert trained[0] < -1e-6 and trained[1]["finetune_steps"] == 2  # training moved it away from the dense model


def test_export_of_a_darwinlm_run_is_the_assembled_candidate(tiny_model_dir, tmp_path):
    from tracenas.export.checkpoint import export_run
    from tracenas.export.config import ExportConfig
    from tracenas.models.pruned import load_pruned
    from tracenas.models.loading import load_model

    out = tmp_path / "run"
    run_search(SearchConfig(model=str(tiny_model_dir), out=str(out), **{**TINY, "iterations": 1}), progress=False)
    arch = json.loads((out / "arch.json").read_text())
    path = export_run(ExportConfig(run_dir=str(out)))
    small = load_pruned(path)
    model, _, _ = load_model(str(tiny_model_dir), dtype=torch.float32, device="cpu", with_tokenizer=False)
    adapter = get_adapter(model)
    LevelAssembler(model, adapter, SparsityDatabase.open(out / "database")).apply(Levels.from_dict(arch["levels"]))
    ids = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(small(ids).logits, model(ids).logits, atol=1e-4, rtol=1e-4)
    assert sum(p.numel() for p in small.parameters()) == arch["params"]
    record = json.loads((out / "history.jsonl").read_text().splitlines()[1])  # any evaluated candidate, by its levels
    other = load_pruned(export_run(ExportConfig(run_dir=str(out), candidate=1)))
    assert sum(p.numel() for p in other.parameters()) == record["params"]
    with pytest.raises(TracenasError, match="reconstructed"):
        export_run(ExportConfig(run_dir=str(out), out=str(tmp_path / "again"), reconstruct="dense"))


def test_presets_and_flags():
    quick = SearchConfig(strategy="darwinlm").resolved()
    assert (quick.offspring, quick.survivors, quick.iterations, quick.proxy) == (4, "2,1", 8, "kl")
    paper = SearchConfig(strategy="darwinlm", preset="paper").resolved()
    cfg = DarwinLMSearch.config_from(paper)
    assert (cfg.offspring, cfg.survivors, cfg.eval_tokens, cfg.train_tokens, cfg.iterations, cfg.finetune_lr) == (
        16, (8, 4, 2, 1), (1024, 2048, 4096, 8192), (10_000, 50_000, 100_000, 200_000), 200, 1e-5)
    assert DarwinLMSearch.config_from(SearchConfig(strategy="darwinlm", offspring=6, finetune_lr=3e-5,
                                                   survivors="3,1", stage_tokens="5,6",
                                                   finetune_tokens="0,7").resolved()).survivors == (3, 1)
    with pytest.raises(TracenasError):
        SearchConfig(strategy="darwinlm", proxy="phi")
    with pytest.raises(TracenasError):
        SearchConfig(strategy="darwinlm", survivors="a,b")


@pytest.mark.skipif(shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists(),
                    reason="torchrun not installed")
def test_two_ranks_equal_one(tiny_model_dir, tmp_path):
    one = tmp_path / "one"
    run_search(SearchConfig(model=str(tiny_model_dir), out=str(one), **{**TINY, "iterations": 2}), progress=False)
    two = tmp_path / "two"
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    env = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1")
    cmd = [torchrun, "--nproc-per-node", "2", "--master-port", "29517", "-m", "tracenas", "search",
           "--model", str(tiny_model_dir), "--out", str(two), "--strategy", "darwinlm", "--num-sequences", "4",
           "--seq-len", "32", "--offspring", "4", "--survivors", "2,1", "--stage-tokens", "40,64",
           "--finetune-tokens", "32,64", "--iterations", "2", "--budget", "0.7", "--budget-tolerance", "0.1",
           "--min-layers", "2", "--database-levels", "4", "--threads", "1"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    h1, h2 = (_strip((d / "history.jsonl").read_text()) for d in (one, two))
    assert h1 == h2
    a1, a2 = (json.loads((d / "arch.json").read_text()) for d in (one, two))
    assert a1["levels"] == a2["levels"] and a1["score"] == a2["score"] and a1["selection"] == a2["selection"]
    assert (two / ".ranks" / "rank-1" / "history.jsonl").read_text() == (two / "history.jsonl").read_text()
    ranks = [json.loads(line)["rank"] for line in (two / "search/timings.jsonl").read_text().splitlines()]
    assert set(ranks) == {0, 1}  # the offspring really were split: each rank scored its share
    assert ranks[:4] == [0, 1, 0, 1]


def test_run_pipeline_with_darwinlm_exports_recovers_evaluates_and_reports_the_cost(tiny_model_dir, tmp_path):
    from tracenas.pipeline.config import RunConfig
    from tracenas.pipeline.runner import run_pipeline

    out = tmp_path / "run"
    knobs = {k: TINY[k] for k in ("num_sequences", "seq_len", "offspring", "survivors", "stage_tokens",
                                  "finetune_tokens", "budget", "budget_tolerance", "min_layers")}
    cfg = RunConfig.from_flags(model=str(tiny_model_dir), out=str(out), strategy="darwinlm", iterations=2, threads=1,
                    recover_tokens="2k", recover_seq_len=32, ppl_max_tokens=512, bench_prompt_len=16, bench_gen_len=4,
                    bench_trials=1, **knobs)
    run_pipeline(cfg, progress=False)
    for name in ("arch.json", "model/config.json", "recover/model/config.json", "eval/pruned/results.json",
                 "eval/recovered/results.json", "bench.json", "report.md", "search/levels.png"):
        assert (out / name).exists(), name
    arch = json.loads((out / "arch.json").read_text())
    report = (out / "report.md").read_text()
    assert "strategy `darwinlm`" in report
    assert f"fine-tuning: {arch['search_cost']['finetune_tokens']:,} tokens" in report
    assert f"fitness evaluations: {arch['search_cost']['candidate_evaluations']:,}" in report
