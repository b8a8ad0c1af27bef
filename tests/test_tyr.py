"""`--strategy tyr`: centred levels that halve per round, exact swaps, expected-error supernets, kill/resume
(mid-round and between rounds), ranks, export and the whole pipeline."""

from __future__ import annotations

import dataclasses
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
from tracenas.prune.database import DatabaseSpec, LevelAssembler, SparsityDatabase, build_database, expected_consumer_
from tracenas.runtime.errors import TracenasError
from tracenas.models import get_adapter
from tracenas.prune.reconstruct import Gram, capture_block_inputs, consumer_input, solve
from tracenas.search.config import SearchConfig
from tracenas.search.strategies.levels import mutate
from tracenas.search.recipes.runner import run_search
from tracenas.search.strategies.tyr import (TyrConfig, TyrSearch, centred_table, round_space, step_units, uniform_centre)

TINY = dict(strategy="tyr", num_sequences=4, seq_len=32, offspring=4, survivors="2,1", stage_tokens="40,64",
            iterations=2, rounds=2, budget="0.7", budget_tolerance=0.1, min_layers=2, threads=1)
SRC = str(Path(__file__).resolve().parents[1] / "src")


def wide_space(num_layers: int = 6) -> SearchSpace:
    """A shape with room for fine steps: 32 heads in 8 KV groups (4 units), 4096 MLP channels (128 units)."""
    shape = get_adapter(make_tiny("llama-gqa", num_layers=num_layers)).shape()
    shape = dataclasses.replace(shape, num_heads=32, num_kv_heads=8, intermediate_size=4096)
    return SearchSpace(shape, min_layers=2)


def test_levels_are_centred_and_their_step_halves_every_round():
    space = wide_space()
    cfg = TyrConfig(offspring=4, survivors=(2, 1), eval_tokens=(8, 16), rounds=4, generations=1)
    centre_attn, centre_mlp = (2,) * 6, (2048, 2048, 1024, 4096, 256, 2048)
    steps = []
    for rnd in range(4):
        ls, centre = round_space(space, cfg, rnd, centre_attn, centre_mlp)
        attn_u, mlp_w = ls.units(centre)
        assert attn_u == centre_attn and mlp_w == centre_mlp  # the centre is a level of every sub-block
        table = ls.table(0, "mlp")
        diffs = {a - b for a, b in zip(table, table[1:])}
        assert len(diffs) == 1 and len(table) == 9  # 9 evenly spaced levels around an interior centre
        assert table.index(2048) == 4
        steps.append(diffs.pop())
    assert steps == [512, 256, 128, 64]  # 12.5 % of 4096, halving
    assert step_units(4096, 0.125 / 2 ** 6, 32) == 32 and step_units(4, 0.125) == 1  # never below one grid unit
    # clipped at the ends (the official rule): levels outside [0, full] are left out
    assert centred_table(4096, 4096, 512, 9) == ((4096, 3584, 3072, 2560, 2048), 0)
    assert centred_table(256, 4096, 512, 9) == ((2304, 1792, 1280, 768, 256), 4)
    ls, _ = round_space(space, cfg, 0, centre_attn, centre_mlp)
    assert ls.table(3, "mlp")[0] == 4096 and ls.table(4, "mlp")[-1] == 256
    assert ls.table(0, "attn") == (4, 3, 2, 1, 0)
    with pytest.raises(TracenasError):
        TyrConfig(levels=8)


def test_swaps_keep_the_budget_exact_and_offspring_stay_in_the_window():
    space = wide_space()
    cfg = TyrConfig(offspring=8, survivors=(2, 1), eval_tokens=(8, 16), rounds=2, generations=1,
                    budget_tolerance=0.05)
    budget = space.resolve_budget("0.6")
    search = TyrSearch(cfg, space, budget, lambda b, t: [])
    centre_attn, centre_mlp = uniform_centre(space, search.window)
    lo, hi = search.window
    ls, parent = round_space(space, cfg, 0, centre_attn, centre_mlp)
    assert lo <= ls.cost(parent) <= hi
    rng = np.random.default_rng(0)
    exact = 0
    for _ in range(300):
        child = mutate(parent, ls, rng, max_flips=4)
        attn_u, mlp_w = ls.units(child)
        assert sum(attn_u) == sum(ls.units(parent)[0]) and sum(mlp_w) == sum(ls.units(parent)[1])
        if 0 not in attn_u and 0 not in mlp_w:  # no sub-block removed (a removal also takes its norm)
            assert ls.cost(child) == ls.cost(parent)
            exact += 1
    assert exact > 250
    search.on_round = lambda rnd, level_space: None
    kids = search.offspring()
    assert len(set(kids)) == 8 and all(lo <= search.levels.cost(k) <= hi and search.levels.valid(k) for k in kids)


def _expected_grams(model, adapter, batches, db, spec, layer: int):
    """Block `layer`'s down_proj input with every block above at its expected levels and this block's attention
    at its expected levels, computed independently of `build_database` (hooks on a copied model)."""
    import copy

    shape = adapter.shape()
    work = copy.deepcopy(model)
    wad = get_adapter(work)
    for i in range(layer + 1):
        tensors = dict(_read(db, i))
        attn, mlp = spec.tables(i)
        expected_consumer_(wad.attn_proj(wad.layers()[i], "o_proj"), "attn", attn, tensors, shape.head_dim)
        if i < layer:
            expected_consumer_(wad.mlp_proj(wad.layers()[i], "down_proj"), "mlp", mlp, tensors, shape.head_dim)
    first = capture_block_inputs(wad, batches, 4)
    dense_first = capture_block_inputs(adapter, batches, 4)
    xs, xd = [], []
    for h, hd, kw in zip(first.states, dense_first.states, first.kwargs):
        for i in range(layer):
            out = wad.layers()[i](h, **kw)
            h = out[0] if isinstance(out, tuple) else out
            out = adapter.layers()[i](hd, **kw)
            hd = out[0] if isinstance(out, tuple) else out
        xs.append(consumer_input(wad, wad.layers()[layer], "down_proj", h, kw))
        xd.append(consumer_input(adapter, adapter.layers()[layer], "down_proj", hd, kw))
    gram = Gram(shape.intermediate_size, paired=True)
    for a, b in zip(xs, xd):
        gram.add(a, b)
    return gram.means()


def _read(db: SparsityDatabase, i: int):
    import safetensors.torch

    return safetensors.torch.load_file(str(db.path / f"block-{i:03d}.safetensors")).items()


def test_expected_inputs_differ_from_dense_and_the_supernet_is_solved_on_them(tmp_path):
    model = make_tiny("llama-gqa", num_layers=3)
    adapter = get_adapter(model)
    tok = make_tiny_tokenizer()
    per_block = (((3, 2, 1), (96, 64, 32)), ((2, 1, 0), (64, 32, 0)), ((3, 2), (96, 64)))
    common = dict(sequences=4, seq_len=32, per_block=per_block)
    exp_spec = DatabaseSpec((), (), inputs="expected", **common)
    expected = build_database(model, adapter, tok, tmp_path / "exp", exp_spec, progress=False)
    dense = build_database(model, adapter, tok, tmp_path / "dense", DatabaseSpec((), (), **common), progress=False)
    e0, d0 = dict(_read(expected, 0)), dict(_read(dense, 0))
    torch.testing.assert_close(e0["attn.1.weight"], d0["attn.1.weight"])  # block 0's attention sees the embeddings
    assert not torch.allclose(e0["mlp.1.weight"], d0["mlp.1.weight"])  # its MLP sees the expected attention
    e1, d1 = dict(_read(expected, 1)), dict(_read(dense, 1))
    assert not torch.allclose(e1["attn.0.weight"], d1["attn.0.weight"], atol=1e-4)
    # the stored MLP levels of block 1 are the least-squares solve on the expected inputs, dense targets
    from tracenas import data as data_mod

    batches = data_mod.token_batches(tok, None, split="calibration", num_sequences=4, seq_len=32, seed=0)
    h, _, cross = _expected_grams(model, adapter, batches, expected, exp_spec, 1)
    kept = e1["mlp.1.kept"]
    want = solve(adapter.mlp_proj(adapter.layers()[1], "down_proj").weight, h, cross, kept, exp_spec.damp)
    torch.testing.assert_close(e1["mlp.1.weight"], want.float(), atol=1e-4, rtol=1e-4)
    # levels per block; full and removed levels store no weights; the assembler reaches every level
    assert expected.table(1, "attn") == (2, 1, 0) and expected.num_levels("mlp", 2) == 2
    assert "mlp.0.weight" not in e0 and "attn.2.kept" not in e1
    assembler = LevelAssembler(model, adapter, expected)
    assert assembler.current == Levels((0, -1, 0), (0, -1, 0))  # -1: no level is the original weights
    assembler.apply(Levels((1, 2, 0), (2, 1, 1)))
    sel = assembler.selection()
    assert [len(s.heads) for s in sel] == [4, 0, 6] and [len(s.channels) for s in sel] == [32, 32, 64]
    assembler.reset()
    assert torch.equal(adapter.mlp_proj(adapter.layers()[1], "down_proj").weight,
                       make_tiny("llama-gqa", num_layers=3).model.layers[1].mlp.down_proj.weight)


def _hist(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / "history.jsonl").read_text().splitlines()]


def _comparable(out: Path) -> tuple[dict, dict]:
    drop = ("wall_seconds", "candidate_seconds", "supernet_seconds_this_session")
    arch = json.loads((out / "arch.json").read_text())
    state = json.loads((out / "search/state.json").read_text())
    for k in drop:
        arch["search_cost"].pop(k)
        state["cost"].pop(k, None)
    return arch, state


@pytest.mark.parametrize("kill", ["mid-round", "between-rounds"])
def test_search_outputs_and_kill_resume_identity(tiny_model_dir, tmp_path, kill):
    from tracenas.search.recipes import tyr as tyr_recipe

    full = tmp_path / "full"
    res = run_search(SearchConfig(model=str(tiny_model_dir), out=str(full), **TINY), progress=False)
    hist = _hist(full)
    assert len(hist) == 2 * 2 * (4 + 2 + 1) == res.candidates_scored
    arch = json.loads((full / "arch.json").read_text())
    assert arch["strategy"] == "tyr" and arch["database"] == "supernet/round-1" and arch["round"] == 1
    assert len(arch["rounds"]) == 2 and len(arch["round_fitness"]) == 2
    assert res.budget * 0.9 <= arch["params"] <= res.budget
    assert arch["search_cost"]["candidate_evaluations"] == 28 and arch["search_cost"]["supernet_bytes"] > 0
    for name in ("search/progress.png", "search/rounds.png", "supernet/round-0/manifest.json",
                 "supernet/round-1/manifest.json"):
        assert (full / name).exists(), name
    # round 1 is centred on round 0's winner
    r1 = SparsityDatabase.open(full / "supernet/round-1")
    winner = arch["rounds"][0]
    assert all(winner["mlp"][i] in r1.table(i, "mlp") for i in range(4))

    killed = tmp_path / "killed"

    def search():
        run_search(SearchConfig(model=str(tiny_model_dir), out=str(killed), **TINY), progress=False)

    if kill == "mid-round":  # generation 1 (round 0), after its first stage was saved
        run_killed(tyr_recipe.TyrRecipe, "_evaluate", search,
                   when=lambda self, batch, task: task.generation == 1 and task.stage == 1)
    else:  # round 0 finished, round 1's supernet being built
        run_killed(tyr_recipe.TyrRecipe, "_on_round", search, when=lambda self, rnd, levels: rnd == 1)
    state = json.loads((killed / "search/state.json").read_text())
    if kill == "mid-round":
        assert state["generation"] == 1 and state["pending"]["stage"] == 1
    else:
        assert state["generation"] == 2 and state.get("pending") is None and state["round"] == 0
    run_search(SearchConfig(model=str(tiny_model_dir), out=str(killed), resume=True, **TINY), progress=False)
    assert _hist(killed) == hist
    assert _comparable(killed) == _comparable(full)


def test_presets_flags_and_the_sparse_kl():
    quick = SearchConfig(strategy="tyr").resolved()
    cfg = TyrSearch.config_from(quick)
    assert (cfg.offspring, cfg.survivors, cfg.generations, cfg.rounds, cfg.levels, quick.proxy) == (
        8, (2, 1), 6, 3, 9, "kl")
    paper = TyrSearch.config_from(SearchConfig(strategy="tyr", preset="paper").resolved())
    assert (paper.offspring, paper.survivors, paper.eval_tokens, paper.generations, paper.rounds, paper.levels,
            paper.initial_step) == (128, (16, 4, 2), (2048, 16384, 131072), 50, 4, 9, 0.125)
    assert TyrSearch.config_from(SearchConfig(strategy="tyr", rounds=2, fitness="sparse_kl", topk=64,
                                              supernet_levels=5).resolved()).topk == 64
    for bad in (dict(proxy="phi"), dict(level_step=0.9), dict(topk=0), dict(survivors="a"), dict(database_seq_len=0)):
        with pytest.raises(TracenasError):
            SearchConfig(strategy="tyr", **bad)
    # the top-k KL over every token is the exact KL; over fewer it differs
    from tracenas.proxies.zero_cost import forward_stats, prepare_reference

    model = make_tiny("llama-gqa")
    adapter = get_adapter(model)
    ids = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    ref = prepare_reference(model, adapter, ids, 2)
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight.mul_(0.3)
    exact = forward_stats(model, adapter, ids, reference=ref, want=("kl",))["kl"]
    full = forward_stats(model, adapter, ids, reference=ref, want=("kl",), kl_topk=model.config.vocab_size)["kl"]
    top = forward_stats(model, adapter, ids, reference=ref, want=("kl",), kl_topk=4)["kl"]
    assert exact > 0 and full == pytest.approx(exact, rel=1e-5) and top != pytest.approx(exact, rel=1e-3) and top >= 0


def test_export_is_the_assembled_candidate_and_the_pipeline_runs(tiny_model_dir, tmp_path):
    from tracenas.export.checkpoint import export_run
    from tracenas.models.pruned import load_pruned
    from tracenas.models.loading import load_model
    from tracenas.pipeline.config import RunConfig
    from tracenas.pipeline.runner import run_pipeline

    out = tmp_path / "run"
    knobs = {k: TINY[k] for k in ("num_sequences", "seq_len", "offspring", "survivors", "stage_tokens", "budget",
                                  "budget_tolerance", "min_layers", "rounds")}
    cfg = RunConfig.from_flags(model=str(tiny_model_dir), out=str(out), strategy="tyr", iterations=1, threads=1,
                    database_sequences=2, database_seq_len=48,
                    recover_tokens="2k", recover_seq_len=32, ppl_max_tokens=512, bench_prompt_len=16, bench_gen_len=4,
                    bench_trials=1, **knobs)
    run_pipeline(cfg, progress=False)
    for name in ("arch.json", "model/config.json", "recover/model/config.json", "eval/pruned/results.json",
                 "eval/recovered/results.json", "bench.json", "report.md"):
        assert (out / name).exists(), name
    arch = json.loads((out / "arch.json").read_text())
    report = (out / "report.md").read_text()
    assert "strategy `tyr`" in report
    assert f"fitness evaluations: {arch['search_cost']['candidate_evaluations']:,}" in report
    small = load_pruned(out / "model")
    model, _, _ = load_model(str(tiny_model_dir), dtype=torch.float32, device="cpu", with_tokenizer=False)
    adapter = get_adapter(model)
    db = SparsityDatabase.open(out / arch["database"])
    LevelAssembler(model, adapter, db).apply(Levels.from_dict(arch["levels"]))
    ids = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(small(ids).logits, model(ids).logits, atol=1e-4, rtol=1e-4)
    assert sum(p.numel() for p in small.parameters()) == arch["params"]
    method = db.manifest["fingerprint"]["method"]  # the supernet's own calibration size, not the search pool's
    assert (method["sequences"], method["seq_len"]) == (2, 48)
    assert export_run  # the pipeline's export is export_run


@pytest.mark.skipif(shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists(),
                    reason="torchrun not installed")
def test_two_ranks_equal_one(tiny_model_dir, tmp_path):
    one = tmp_path / "one"
    run_search(SearchConfig(model=str(tiny_model_dir), out=str(one), **TINY), progress=False)
    two = tmp_path / "two"
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    env = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1")
    cmd = [torchrun, "--nproc-per-node", "2", "--master-port", "29519", "-m", "tracenas", "search",
           "--model", str(tiny_model_dir), "--out", str(two), "--strategy", "tyr", "--num-sequences", "4",
           "--seq-len", "32", "--offspring", "4", "--survivors", "2,1", "--stage-tokens", "40,64",
           "--iterations", "2", "--rounds", "2", "--budget", "0.7", "--budget-tolerance", "0.1",
           "--min-layers", "2", "--threads", "1"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _hist(one) == _hist(two)
    a1, a2 = (json.loads((d / "arch.json").read_text()) for d in (one, two))
    assert (a1["levels"], a1["score"], a1["selection"], a1["rounds"]) == (a2["levels"], a2["score"], a2["selection"],
                                                                           a2["rounds"])
    ranks = [json.loads(line)["rank"] for line in (two / "search/timings.jsonl").read_text().splitlines()]
    assert set(ranks) == {0, 1}
