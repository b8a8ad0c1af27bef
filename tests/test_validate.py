"""Proxy validation: correlations, candidate sampling, zero-cost proxies, the study end to end, resume, ranks."""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import make_tiny, make_tiny_tokenizer

from tracenas.proxies import traces as proxy_mod
from tracenas import validate
from tracenas.proxies import zero_cost
from tracenas.arch import Genome, SearchSpace
from tracenas.cli import main as cli_main
from tracenas.runtime.errors import RunDirError, TracenasError
from tracenas.prune.masking import compute_importance
from tracenas.models import get_adapter
from tracenas.proxies.traces import Scorer, TraceProbes
from tracenas.proxies.registry import proxy_names, unregister
from tracenas.validate import (
    ValidateConfig,
    Validator,
    rank_correlations,
    read_records,
    run_validation,
    sample_candidates,
    short_recover,
)
from tracenas.validate import runner as validate_runner

# Small enough for a 4-layer tiny model on a loaded 2-core machine; 0.7 because the tiny grid is coarse.
TINY = {"budget": "0.7", "budget_tolerance": 0.1, "num_candidates": 5, "seeds": 2, "num_sequences": 2,
        "seq_len": 16, "rank": 4, "micro_batch": 1, "naswot_tokens": 24, "eval_sequences": 2, "eval_seq_len": 16,
        "recover_steps": "0,1,2", "recover_batch": 1, "recover_seq_len": 16, "recover_lr": 1e-3, "sweep_n": "1,2,3",
        "sweep_cl": "8,16", "sweep_rank": "2,4"}


def _flags(d: dict) -> list[str]:
    return [x for k, v in d.items() for x in (f"--{k.replace('_', '-')}", str(v))]


# --------------------------------------------------------------------------- statistics


def test_rank_correlations_known_rankings():
    scores = [0.1, 0.5, 0.7, 2.0]
    assert rank_correlations(scores, [40.0, 30.0, 20.0, 10.0]) == {"spearman": 1.0, "kendall": 1.0, "n": 4}
    rev = rank_correlations(scores, [10.0, 20.0, 30.0, 40.0])
    assert rev["spearman"] == pytest.approx(-1.0) and rev["kendall"] == pytest.approx(-1.0)
    # -ppl order [1, 3, 2, 4]: one discordant pair of 6 -> tau = (5 - 1) / 6; sum d^2 = 2 -> rho = 1 - 12/60
    c = rank_correlations([1.0, 2.0, 3.0, 4.0], [4.0, 2.0, 3.0, 1.0])
    assert c["kendall"] == pytest.approx(4 / 6)
    assert c["spearman"] == pytest.approx(0.8)


def test_rank_correlations_handle_minus_inf_and_nan():
    # a -inf score (non-finite candidate) is simply the worst; a NaN pair is dropped
    c = rank_correlations([float("-inf"), 1.0, 2.0, float("nan")], [50.0, 20.0, 10.0, 5.0])
    assert c["n"] == 3 and c["spearman"] == pytest.approx(1.0) and c["kendall"] == pytest.approx(1.0)
    assert math.isnan(rank_correlations([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])["kendall"])  # constant proxy


# --------------------------------------------------------------------------- candidates


def _space(model, min_layers=None):
    shape = get_adapter(model).shape()
    return SearchSpace(shape, min_layers=min_layers or shape.num_layers // 2)


def test_sample_candidates_in_window_distinct_mixed_and_extendable():
    space = _space(make_tiny("llama-gqa", num_layers=8))
    budget = int(0.6 * space.base_params())
    cands = sample_candidates(space, budget, 9, seed=3, tolerance=0.1)
    assert len(cands) == 9
    assert len({g.key() for g, _ in cands}) == 9
    assert [f for _, f in cands] == ["width", "depth", "mixed"] * 3
    for g, fam in cands:
        assert int(budget * 0.9) <= space.params(g) <= budget
        assert sum(g.keep) >= space.min_layers
        assert (sum(g.keep) == 8) == (fam == "width")
    assert sample_candidates(space, budget, 9, seed=3, tolerance=0.1) == cands  # deterministic
    assert sample_candidates(space, budget, 5, seed=3, tolerance=0.1) == cands[:5]  # a prefix: --num-candidates grows
    assert sample_candidates(space, budget, 9, seed=4, tolerance=0.1) != cands


# --------------------------------------------------------------------------- zero-cost proxies


@pytest.fixture(scope="module")
def tiny_setup():
    model = make_tiny("llama-gqa")
    adapter = get_adapter(model)
    space = _space(model)
    batches = torch.randint(0, 128, (3, 24), generator=torch.Generator().manual_seed(1))
    imp = compute_importance(model, adapter, batches)
    return model, adapter, space, imp, batches


def _pruned(space):
    n = space.shape.num_layers
    return space.snap(Genome((True, False) + (True,) * (n - 2), (0.4,) * n, (0.5,) * n))


@pytest.mark.parametrize("name", zero_cost.ZERO_COST_PROXIES)
def test_zero_cost_proxies_are_registered_finite_and_kl_of_unpruned_is_zero(tiny_setup, name):
    model, adapter, space, imp, batches = tiny_setup
    assert name in proxy_mod.available_proxies()
    zero_cost.prepare_reference(model, adapter, batches)
    scorer = Scorer(model, adapter, space, imp, batches, name)
    full, _ = scorer.score(Genome.full(space.shape.num_layers))
    small, _ = scorer.score(_pruned(space))
    assert math.isfinite(full) and math.isfinite(small)
    if name == "kl":
        assert abs(full) < 1e-5 and small < -1e-3  # score = -KL: zero for the base, negative when pruned
    if name == "ppl":
        with torch.no_grad():
            assert full == pytest.approx(-float(proxy_mod.causal_lm_loss(adapter, batches)), rel=1e-5)


def test_naswot_logdet_known_kernel():
    codes = torch.tensor([[1, 0, 1], [0, 1, 1]], dtype=torch.bool)
    # K = U - Hamming: [[3, 1], [1, 3]]; + I -> [[4, 1], [1, 4]], det 15
    assert zero_cost.naswot_logdet(codes) == pytest.approx(math.log(15))
    # identical codes: K = 3 * ones is singular; + I keeps it finite: det [[4, 3], [3, 4]] = 7
    assert zero_cost.naswot_logdet(torch.ones(2, 3, dtype=torch.bool)) == pytest.approx(math.log(7))


def test_zico_accumulator_matches_definition():
    g = [torch.tensor([[1.0, 0.0], [2.0, -1.0]]), torch.tensor([[3.0, 0.0], [2.0, 1.0]])]
    acc = zero_cost.ZicoAccumulator()
    for t in g:
        acc.add({(0, "q_proj"): t})
    # coord (0,0): mean|g| 2, std 1 -> 2; (1,0): std 0 skipped; (0,1): zero skipped; (1,1): mean|g| 1, std 1 -> 1
    assert acc.score() == pytest.approx(math.log(3.0))


def test_kl_without_reference_is_a_clear_error(tiny_setup):
    model, adapter, space, imp, batches = tiny_setup
    zero_cost.clear_references(model)
    with pytest.raises(Exception, match="prepare_reference"):
        zero_cost.kl_proxy(model, adapter, batches[:2], Genome.full(space.shape.num_layers), None)


# --------------------------------------------------------------------------- shared passes = standalone proxies


def test_validator_one_pass_scores_equal_standalone_scorers(tiny_setup):
    """Every score from the shared passes equals the proxy computed alone through Scorer."""
    model, adapter, space, imp, _ = tiny_setup
    cfg = ValidateConfig(**{**TINY, "sweep": True, "naswot_tokens": 256}).resolved()  # 256: all tokens, as alone
    val = Validator(cfg, model, adapter, space, make_tiny_tokenizer(), importance=imp)
    ctx = val.context(0)
    names = list(proxy_names()) + list(validate.VARIANTS)
    genome = _pruned(space)
    scores, cost, sweep = val.score(ctx, genome, names, with_sweep=True)
    assert set(names) <= set(scores) and set(names) <= set(cost)
    assert len(val.last_rho["attn"]) == space.shape.num_layers and val.last_rho["attn"][1] is None  # dropped
    batches = ctx.batches[:cfg.num_sequences]
    probes = TraceProbes(model, adapter, rank=cfg.rank, seed=0)
    base, _ = probes.trace(batches, 1)
    try:
        for name in ("phi", "pearson", "cosine", "dot", "gradnorm", "synflow", "params", "naswot", "zico", "ppl", "kl"):
            alone, _ = Scorer(model, adapter, space, imp, batches, name, probes, base).score(genome)
            assert scores[name] == pytest.approx(alone, rel=1e-4, abs=1e-6), name
    finally:
        probes.remove()
    # the sweep's main setting is the main Φ, in every category
    for key in (f"N={cfg.num_sequences}", f"CL={cfg.seq_len}", f"r={cfg.rank}"):
        assert sweep[key] == pytest.approx(scores["phi"], rel=1e-6)
    assert scores["phi_active"] >= scores["phi"] - 1e-9  # pruned rows only ever lower the correlation here
    # the unpruned genome: every alignment proxy is perfect
    full, _, _ = val.score(ctx, Genome.full(space.shape.num_layers), ["phi", "kl", "phi_all"])
    assert full["phi"] == pytest.approx(2 * space.shape.num_layers) and abs(full["kl"]) < 1e-5
    assert full["phi_all"] == pytest.approx(1.0)


def test_any_registered_proxy_is_scored_with_the_candidates_masks(tiny_setup, tmp_path, capsys):
    model, adapter, space, imp, _ = tiny_setup

    def kept_q_rows(model, adapter, batches, genome, scorer):  # sees the masked weights
        return float(sum(int(adapter.attn_proj(layer, "q_proj").weight.abs().sum(1).gt(0).sum())
                         for i, layer in enumerate(adapter.layers()) if genome.keep[i]))

    with pytest.raises(TracenasError, match="unknown proxies kept_q_rows"):
        ValidateConfig(**{**TINY, "proxies": "phi,kept_q_rows"})
    assert cli_main(["validate-proxy", "--out", str(tmp_path / "v"), "--proxies", "phi,kept_q_rows"]) == 2
    assert "unknown proxies kept_q_rows" in capsys.readouterr().err and not (tmp_path / "v").exists()
    # registered after every tracenas module was imported: the config, "all" and the Validator see it
    proxy_mod.register_proxy("kept_q_rows", kept_q_rows, "query rows kept")
    try:
        cfg = ValidateConfig(**{**TINY, "proxies": "phi,kept_q_rows"}).resolved()
        assert validate.proxy_names(cfg) == ["phi", "kept_q_rows"]
        assert ValidateConfig(**TINY).proxy_list()[-1] == "kept_q_rows"
        val = Validator(cfg, model, adapter, space, make_tiny_tokenizer(), importance=imp)
        genome = _pruned(space)
        scores, cost, _ = val.score(val.context(0), genome, ["phi", "kept_q_rows"])
    finally:
        unregister("kept_q_rows")
    expected = sum(la.num_heads * space.shape.head_dim for la in space.layer_arch(genome) if la.keep)
    assert scores["kept_q_rows"] == expected and "kept_q_rows" in cost


def test_short_recover_is_deterministic_and_reports_every_step():
    model = make_tiny("llama-gqa")
    tokens = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(0))
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    seen = []
    la = short_recover(a, tokens, 4, 1e-3, callback=seen.append)
    lb = short_recover(b, tokens, 4, 1e-3)
    assert seen == [1, 2, 3, 4] and la == lb and len(la) == 4
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), model.parameters()))


# --------------------------------------------------------------------------- the study, resume, ranks


@pytest.fixture(scope="module")
def study(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("validate") / "run"
    flags = ["validate-proxy", "--model", str(tiny_model_dir), "--out", str(out), "--sweep", "--variants"]
    assert cli_main(flags + _flags(TINY)) == 0
    return out


def test_study_writes_table_results_scatter_and_sweep(study):
    for name in ("table.md", "results.json", "scatter.png", "validate.yaml", "candidates.json", "sweep.json",
                 "sweep.md", "sweep.png", "validate.log"):
        assert (study / name).is_file(), name
    res = json.loads((study / "results.json").read_text())
    assert res["candidates"] == 5
    for name in list(proxy_names()) + list(validate.VARIANTS):
        entry = res["proxies"][name]
        assert set(entry["vs"]) == {"0", "1", "2"}
        assert len(entry["vs"]["2"]["kendall"]["per_seed"]) == 2
    assert res["proxies"]["params"]["vs"]["2"]["spearman"]["std"] == 0.0  # seed-independent
    table = (study / "table.md").read_text()
    assert "TraceNAS (Φ)" in table and "**" in table and "PPL @ 2 steps KT" in table
    recs = read_records(study / "candidates.jsonl")
    assert sum(r["type"] == "truth" for r in recs) == 5
    assert sum(r["type"] == "proxy" for r in recs) == 10 and sum(r["type"] == "sweep" for r in recs) == 10
    assert all(len(r["rho"]["mlp"]) == 4 for r in recs if r["type"] == "proxy")  # per-block ρ of Φ kept
    sweep = json.loads((study / "sweep.json").read_text())
    assert sweep["N"]["rows"]["3"]["tau_vs_ref"]["mean"] == pytest.approx(1.0)  # the reference vs itself


def test_resume_skips_what_is_on_disk(study, tmp_path, monkeypatch, tiny_model_dir):
    out = tmp_path / "run"
    shutil.copytree(study, out)
    path = out / "candidates.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    keep = [ln for ln in lines if json.loads(ln).get("index", 0) in (0, 1)
            or (json.loads(ln)["type"] == "proxy" and json.loads(ln)["index"] == 2)]
    path.write_text("".join(keep) + '{"type": "truth", "ind')  # + a record torn by a kill
    calls = []
    real = validate.ground_truth

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(validate_runner, "ground_truth", counting)  # the name the run looks up
    cfg = ValidateConfig(model=str(tiny_model_dir), out=str(out), sweep=True, variants=True, **TINY)
    run_validation(cfg, progress=False)
    assert len(calls) == 3  # candidates 2, 3, 4
    after = path.read_text().splitlines(keepends=True)
    assert after[:len(keep)] == keep  # what was on disk is untouched (the torn tail is dropped)
    recs = read_records(path)
    proxy2 = [r for r in recs if r["type"] == "proxy" and r["index"] == 2]
    assert len(proxy2) == 2  # candidate 2's proxy records were on disk: not recomputed
    assert sum(r["type"] == "truth" for r in recs) == 5
    old = json.loads((study / "results.json").read_text())["proxies"]["phi"]["vs"]["2"]["kendall"]["mean"]
    new = json.loads((out / "results.json").read_text())["proxies"]["phi"]["vs"]["2"]["kendall"]["mean"]
    assert new == pytest.approx(old)
    calls.clear()
    n_lines = len(after)
    run_validation(cfg, progress=False)  # nothing left to do
    assert calls == [] and len(path.read_text().splitlines()) == n_lines


def test_saved_config_reruns_the_same_study(study, tmp_path):
    """`--config OUT/validate.yaml` is accepted as is and resolves to the same settings (so it resumes)."""
    from tracenas.runtime.config import from_args, load_yaml

    cli_args = __import__("argparse").Namespace(out=str(tmp_path / "x"))
    cfg = from_args(ValidateConfig, cli_args, load_yaml(study / "validate.yaml"))
    assert cfg.recover_steps == TINY["recover_steps"] and cfg.seeds == TINY["seeds"] and cfg.sweep
    res = json.loads((study / "results.json").read_text())
    assert res["budget_params"] <= 0.7 * res["base_params"] and res["world_size"] == 1


def test_resume_refuses_other_settings(study, tmp_path, tiny_model_dir):
    out = tmp_path / "run"
    shutil.copytree(study, out)
    with pytest.raises(RunDirError, match="recover_lr"):
        run_validation(ValidateConfig(model=str(tiny_model_dir), out=str(out), **{**TINY, "recover_lr": 5e-4}),
                       progress=False)


def test_two_ranks_with_torchrun_match_one_process(study, tmp_path, tiny_model_dir):
    out = tmp_path / "dist"
    settings = {**TINY, "seeds": 1, "proxies": "phi,kl,params"}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517",
           "-m", "tracenas", "validate-proxy", "--model", str(tiny_model_dir), "--out", str(out), *_flags(settings)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "validate.log").is_file() and (out / "validate.rank1.log").is_file()
    recs = read_records(out / "candidates.jsonl")
    truth = {r["index"]: r for r in recs if r["type"] == "truth"}
    assert sorted(truth) == [0, 1, 2, 3, 4]
    ref = {r["index"]: r for r in read_records(study / "candidates.jsonl") if r["type"] == "truth"}
    ref_phi = {r["index"]: r["scores"]["phi"] for r in read_records(study / "candidates.jsonl")
               if r["type"] == "proxy" and r["seed"] == 0}
    phi = {r["index"]: r["scores"]["phi"] for r in recs if r["type"] == "proxy"}
    for i in range(5):  # the same numbers as the single-process run (with --sweep: the main Φ is unaffected)
        assert truth[i]["ppl"]["2"] == pytest.approx(ref[i]["ppl"]["2"], rel=1e-4)
        assert phi[i] == pytest.approx(ref_phi[i], rel=1e-4)
    assert (out / "table.md").is_file() and "KL to base" in (out / "table.md").read_text()


def test_bf16_proxies_and_autocast_recovery_keep_the_fp32_ground_truth(study, tmp_path, tiny_model_dir):
    """--dtype bfloat16 runs the proxies on a bf16 copy; the candidates are still sliced from fp32 weights."""
    out = tmp_path / "bf16"
    settings = {**TINY, "num_candidates": 3, "seeds": 1, "proxies": "phi,kl", "dtype": "bfloat16",
                "recover_dtype": "bfloat16"}
    run_validation(ValidateConfig(model=str(tiny_model_dir), out=str(out), **settings), progress=False)
    recs = read_records(out / "candidates.jsonl")
    ref = {r["index"]: r for r in read_records(study / "candidates.jsonl") if r["type"] == "truth"}
    for r in recs:
        if r["type"] == "truth":  # same selection (fp32 importance), eval under bf16 autocast
            assert r["ppl"]["0"] == pytest.approx(ref[r["index"]]["ppl"]["0"], rel=0.05)
        if r["type"] == "proxy":
            assert all(math.isfinite(float(v)) for v in r["scores"].values())


def test_cli_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main(["validate-proxy", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--num-candidates", "--recover-steps", "--seeds", "--sweep", "--variants", "--proxies", "--config"):
        assert flag in text
