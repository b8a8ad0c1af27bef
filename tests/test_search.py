import json
import shutil

import pytest
import yaml

from tracenas.cli import main
from tracenas.runtime.errors import TracenasError
from tracenas.search.config import SearchConfig
from tracenas.search.recipes.runner import run_search

TINY = dict(preset="quick", num_sequences=2, seq_len=32, rank=4, population=5, elites=2, iterations=3,
            budget="0.7", budget_tolerance=0.1, min_layers=2, micro_batch=2)


def _read(out):
    return (out / "arch.json").read_text(), (out / "history.jsonl").read_text()


def test_search_writes_run_dir_and_meets_budget(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    res = run_search(SearchConfig(model=str(tiny_model_dir), out=str(out), **TINY), progress=False)
    arch = json.loads((out / "arch.json").read_text())
    assert arch["params"] <= res.budget
    assert arch["params"] >= res.budget * 0.9
    assert len(arch["selection"]) == len(arch["genome"]["keep"])
    hist = (out / "history.jsonl").read_text().splitlines()
    assert len(hist) == res.candidates_scored >= 5
    for name in ("search.yaml", "search.log", "search/state.json", "search/progress.png", "search/arch.png",
                 "search/summary.json"):
        assert (out / name).exists(), name
    assert arch["score"] == max(json.loads(h)["score"] for h in hist)


@pytest.mark.parametrize("proxy", ["phi", "kl"])  # gradient traces (saved base traces) and forward-only
def test_same_seed_same_result_and_resume_equals_uninterrupted(tiny_model_dir, tmp_path, monkeypatch, proxy):
    cfg = {**TINY, "proxy": proxy}
    full = tmp_path / "full"
    run_search(SearchConfig(model=str(tiny_model_dir), out=str(full), **cfg), progress=False)
    assert json.loads((full / "arch.json").read_text())["proxy"] == proxy
    again = tmp_path / "again"
    run_search(SearchConfig(model=str(tiny_model_dir), out=str(again), **cfg), progress=False)
    assert _read(full) == _read(again)

    # kill the search after generation 1 by raising from the per-generation hook
    from tracenas.search.strategies import evolution

    killed = tmp_path / "killed"
    original_step = evolution.Evolution.step

    def step_then_die(self):
        original_step(self)
        if self.state.generation == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(evolution.Evolution, "step", step_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_search(SearchConfig(model=str(tiny_model_dir), out=str(killed), **cfg), progress=False)
    monkeypatch.setattr(evolution.Evolution, "step", original_step)
    assert json.loads((killed / "search/state.json").read_text())["generation"] == 1
    # a stray half-written history line from the crash must not survive the resume
    with open(killed / "history.jsonl", "a") as fh:
        fh.write('{"index": 999}\n')
    run_search(SearchConfig(model=str(tiny_model_dir), out=str(killed), resume=True, **cfg), progress=False)
    assert _read(killed) == _read(full)


def test_preset_chooses_the_proxy_and_a_flag_overrides_it():
    assert SearchConfig(preset="quick").resolved().proxy == "kl"
    assert SearchConfig(preset="paper").resolved().proxy == "phi"
    assert SearchConfig(preset="quick", proxy="phi").resolved().proxy == "phi"
    assert SearchConfig(preset="paper", proxy="pearson").resolved().proxy == "pearson"
    with pytest.raises(TracenasError, match="unknown proxy"):
        SearchConfig(proxy="nope")


def test_resume_takes_left_out_options_from_the_saved_search(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "old"
    run_search(SearchConfig(model=str(tiny_model_dir), out=str(out), **{**TINY, "iterations": 1, "proxy": "phi"}),
               progress=False)
    saved = (out / "search.yaml").read_text()
    capsys.readouterr()
    # an explicit option that differs is refused, naming it, and the saved config is left as it was
    assert main(["search", "--out", str(out), "--resume", "--proxy", "kl"]) == 2
    err = capsys.readouterr().err
    assert "--proxy 'phi' -> 'kl'" in err and len(err.strip().splitlines()) == 1
    assert (out / "search.yaml").read_text() == saved
    # left out (no --model, no --proxy, no sizes): continues the saved search, extended by --iterations
    assert main(["search", "--out", str(out), "--resume", "--iterations", "2"]) == 0
    assert json.loads((out / "search/state.json").read_text())["generation"] == 2
    assert json.loads((out / "arch.json").read_text())["proxy"] == "phi"
    assert yaml.safe_load((out / "search.yaml").read_text())["iterations"] == 2


def test_cli_search_errors(tiny_model_dir, tmp_path, capsys):
    base = ["search", "--model", str(tiny_model_dir), "--num-sequences", "2", "--seq-len", "32", "--rank", "4",
            "--population", "4", "--elites", "2", "--iterations", "1", "--min-layers", "2"]
    assert main(base + ["--out", str(tmp_path / "a"), "--budget", "10"]) == 2
    assert "outside what this search space can reach" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "b"), "--budget", "abc"]) == 2
    assert "cannot parse budget" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "c"), "--num-sequences", "100000"]) == 2
    assert "tokens" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "d"), "--resume"]) == 2
    assert "no saved search" in capsys.readouterr().err
    assert main(["search", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "e")]) == 2
    assert "no such model" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "f"), "--min-layers", "99"]) == 2
    assert "--min-layers" in capsys.readouterr().err


def test_unsupported_family_is_one_line(tmp_path, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64)).save_pretrained(tmp_path / "gpt2")
    capsys.readouterr()
    assert main(["search", "--model", str(tmp_path / "gpt2"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "not supported" in err and "llama" in err and "qwen2" in err and "mistral" in err
    assert len(err.strip().splitlines()) == 1


def test_resume_refuses_changed_config(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "r"
    run_search(SearchConfig(model=str(tiny_model_dir), out=str(out), **{**TINY, "iterations": 1}), progress=False)
    args = ["search", "--model", str(tiny_model_dir), "--out", str(out), "--resume", "--seed", "5"]
    for k, v in {**TINY, "iterations": 1}.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    saved = (out / "search.yaml").read_text()
    assert main(args) == 2
    assert "--seed 0 -> 5" in capsys.readouterr().err
    assert (out / "search.yaml").read_text() == saved
    assert main(["search", "--model", str(tiny_model_dir), "--out", str(out)]) == 2
    assert "already holds a search" in capsys.readouterr().err
    shutil.rmtree(out)


@pytest.mark.parametrize("strategy", ["uniform", "random"])
def test_baseline_strategies(tiny_model_dir, tmp_path, strategy):
    out = tmp_path / strategy
    res = run_search(SearchConfig(model=str(tiny_model_dir), out=str(out), strategy=strategy, **TINY), progress=False)
    arch = json.loads((out / "arch.json").read_text())
    assert arch["strategy"] == strategy and res.budget * 0.9 <= arch["params"] <= res.budget
    g = arch["genome"]
    if strategy == "uniform":
        assert all(g["keep"]) and len(set(g["attn"])) == 1 and len(set(g["mlp"])) == 1
        assert res.candidates_scored == 1
    else:
        assert res.candidates_scored == 5 + 2 * 3  # same candidate budget as the evolution


@pytest.mark.parametrize("proxy", ["kl", "ppl", "naswot"])
def test_search_with_zero_cost_proxies(tiny_model_dir, tmp_path, proxy):
    out = tmp_path / proxy
    res = run_search(SearchConfig(model=str(tiny_model_dir), out=str(out), proxy=proxy,
                                  **{**TINY, "iterations": 2}), progress=False)
    arch = json.loads((out / "arch.json").read_text())
    assert arch["proxy"] == proxy and arch["params"] <= res.budget
    scores = [json.loads(h)["score"] for h in (out / "history.jsonl").read_text().splitlines()]
    assert all(isinstance(s, float) for s in scores) and len(set(scores)) > 1


def test_resume_with_run_time_resolved_defaults(tiny_model_dir, tmp_path):
    cfg = {k: v for k, v in TINY.items() if k != "min_layers"}  # min_layers resolved from the model
    out = tmp_path / "r"
    run_search(SearchConfig(model=str(tiny_model_dir), out=str(out), **{**cfg, "iterations": 1}), progress=False)
    res = run_search(SearchConfig(model=str(tiny_model_dir), out=str(out), resume=True,
                                  **{**cfg, "iterations": 2}), progress=False)
    assert json.loads((out / "search/state.json").read_text())["generation"] == 2
    assert res.candidates_scored > 5


def test_proxy_registered_after_import_is_accepted_by_the_cli_search(tiny_model_dir, tmp_path):
    """`tracenas.cli` and `tracenas.search.config` are imported above; the proxy is registered only now."""
    from tracenas.arch import Genome
    from tracenas.proxies.traces import register_proxy
    from tracenas.proxies.registry import unregister

    seen: dict[str, float] = {}

    def kept_q_rows(model, adapter, batches, genome, scorer):  # under the masks: pruned heads are zero rows
        value = float(sum(int(adapter.attn_proj(layer, "q_proj").weight.abs().sum(1).gt(0).sum())
                          for i, layer in enumerate(adapter.layers()) if genome.keep[i]))
        seen[genome.key()] = value
        return value

    out = tmp_path / "late"
    flags = [x for k, v in {**TINY, "iterations": 2}.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    register_proxy("kept_q_rows", kept_q_rows, "query rows kept (test)")
    try:
        assert main(["search", "--model", str(tiny_model_dir), "--out", str(out), "--proxy", "kept_q_rows",
                     *flags]) == 0
    finally:
        unregister("kept_q_rows")
    assert json.loads((out / "arch.json").read_text())["proxy"] == "kept_q_rows"
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [h["score"] for h in history] == [seen[Genome.from_dict(h["genome"]).key()] for h in history]
    assert len({h["score"] for h in history}) > 1
    with pytest.raises(SystemExit):  # unregistered again: no longer a --proxy choice
        main(["search", "--model", str(tiny_model_dir), "--out", str(tmp_path / "gone"), "--proxy", "kept_q_rows"])


def _interrupt_scorer_after(monkeypatch, k: int) -> None:
    """Make the scorer raise KeyboardInterrupt (a Ctrl-C) when asked for candidate k+1."""
    from tracenas.proxies.traces import Scorer

    original, calls = Scorer.score, []

    def score_or_die(self, genome):
        if len(calls) == k:
            raise KeyboardInterrupt
        calls.append(genome)
        return original(self, genome)

    monkeypatch.setattr(Scorer, "score", score_or_die)


def _final(out):
    return _read(out) + ((out / "search/state.json").read_text(),)


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted") / "full"
    run_search(SearchConfig(model=str(tiny_model_dir), out=str(out), **TINY), progress=False)
    return out


def _inside_a_later_generation(history: list[dict]) -> int:
    """A k after which the search is inside generation >= 1, with candidates of it scored before and after."""
    return next(k for k in range(1, len(history)) if history[k - 1]["generation"] >= 1
                and history[k]["generation"] == history[k - 1]["generation"])


@pytest.mark.parametrize("where", ["first", "generation 0", "later generation"])
def test_interrupt_after_any_candidate_resumes_identically(tiny_model_dir, tmp_path, monkeypatch, uninterrupted,
                                                           where):
    history = [json.loads(line) for line in (uninterrupted / "history.jsonl").read_text().splitlines()]
    k = {"first": 1, "generation 0": 3, "later generation": _inside_a_later_generation(history)}[where]
    killed = tmp_path / "killed"
    _interrupt_scorer_after(monkeypatch, k)
    with pytest.raises(KeyboardInterrupt):
        run_search(SearchConfig(model=str(tiny_model_dir), out=str(killed), **TINY), progress=False)
    monkeypatch.undo()
    state = json.loads((killed / "search/state.json").read_text())
    assert state["history_len"] == k and state["generation"] == history[k]["generation"]
    assert state["pending"], "the generation in progress is saved with the state"
    assert (killed / "history.jsonl").read_text().splitlines() == [
        line for line in (uninterrupted / "history.jsonl").read_text().splitlines()][:k]
    with open(killed / "search/timings.jsonl", "a") as fh:  # a record written after the last saved state
        fh.write('{"index": 999, "seconds": 1.0}\n')
    run_search(SearchConfig(model=str(tiny_model_dir), out=str(killed), resume=True, **TINY), progress=False)
    assert _final(killed) == _final(uninterrupted)
    assert "pending" not in json.loads((killed / "search/state.json").read_text())
    assert len((killed / "search/timings.jsonl").read_text().splitlines()) == len(history)


def test_ctrl_c_message_says_what_was_kept(tiny_model_dir, tmp_path, monkeypatch, capsys, uninterrupted):
    flags = [x for k, v in TINY.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    nothing = tmp_path / "nothing"
    _interrupt_scorer_after(monkeypatch, 0)
    assert main(["search", "--model", str(tiny_model_dir), "--out", str(nothing), *flags]) == 130
    assert "nothing was kept" in capsys.readouterr().err
    assert not nothing.exists()  # the guard removed the run directory it created: there is nothing to resume
    monkeypatch.undo()

    some = tmp_path / "some"
    _interrupt_scorer_after(monkeypatch, 2)
    assert main(["search", "--model", str(tiny_model_dir), "--out", str(some), *flags]) == 130
    err = capsys.readouterr().err
    assert "2 candidates scored and saved" in err and f"--out {some} --resume" in err
    monkeypatch.undo()
    assert main(["search", "--out", str(some), "--resume", "--iterations", str(TINY["iterations"])]) == 0
    assert _final(some) == _final(uninterrupted)


def _distinct_architectures(space) -> int:
    """Brute force: every keep pattern x every combination of per-block widths that a fine sweep of ratios
    realizes, each built as a genome and realized by the space, deduplicated by its realized blocks."""
    import itertools

    from tracenas.arch import Genome

    n, ratios = space.shape.num_layers, [j / 96 for j in range(1, 97)]
    per_block = sorted({(space.snap_attn(a), space.snap_mlp(m)) for a in ratios for m in ratios})
    seen = set()
    for keep in itertools.product([False, True], repeat=n):
        if sum(keep) < space.min_layers:
            continue
        for widths in itertools.product(per_block, repeat=n):
            genome = Genome(keep, tuple(a for a, _ in widths), tuple(m for _, m in widths))
            seen.add(tuple((la.num_heads, la.mlp_width) for la in space.layer_arch(genome) if la.keep)
                     + (keep,))
    return len(seen)


@pytest.mark.parametrize("kind,num_layers,min_layers", [("llama-gqa", 3, 2), ("llama-mha", 2, 1)])
def test_dry_run_plan_counts_equal_the_search_space(tmp_path, kind, num_layers, min_layers):
    from tests.conftest import save_tiny
    from tracenas.arch import SearchSpace
    from tracenas.models import get_adapter, load_model
    from tracenas.search.plan import plan_search

    model_dir = save_tiny(tmp_path / kind, kind, num_layers=num_layers)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    plan = plan_search(SearchConfig(model=str(model_dir), out=str(tmp_path / "never"),
                                    **{**TINY, "min_layers": min_layers}))
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written, no run directory
    assert plan.shape_from == "config"
    model, _, _ = load_model(str(model_dir), with_tokenizer=False)
    space = SearchSpace(get_adapter(model).shape(), min_layers=min_layers)
    assert plan.shape == space.shape  # the config alone gives the loaded model's shape
    assert plan.reachable == space.reachable() and plan.budget == space.resolve_budget(TINY["budget"])
    assert plan.shape_params() == space.base_params() == sum(p.numel() for p in model.parameters())
    assert plan.space_size == _distinct_architectures(space)
    assert plan.candidates == 5 + (3 - 1) * (5 - 2) and plan.tokens_per_candidate == 2 * 32
    assert not plan.backward and plan.flops_per_candidate == 2 * plan.budget * 64  # kl: forward only, sliced
    masked = plan_search(SearchConfig(model=str(model_dir), out=str(tmp_path / "never"), score_on="masked",
                                      **{**TINY, "min_layers": min_layers}))
    assert masked.flops_per_candidate == 2 * space.base_params() * 64  # under masks: the full model


def test_dry_run_cli_prints_the_plan_and_writes_nothing(tiny_model_dir, tmp_path, capsys):
    flags = [x for k, v in TINY.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    out = tmp_path / "run"
    assert main(["search", "--model", str(tiny_model_dir), "--out", str(out), "--dry-run", *flags,
                 "--proxy", "phi"]) == 0
    text = capsys.readouterr().out
    assert not out.exists()
    assert "candidates to score: at most 11" in text and "forward + backward" in text and "x 3" in text
    assert "no weights loaded" in text and "distinct genomes" in text
    assert main(["search", "--model", str(tiny_model_dir), "--out", str(out), "--dry-run", *flags,
                 "--strategy", "uniform"]) == 0
    assert "at most 1\n" in capsys.readouterr().out and not out.exists()


def test_every_seed_calibrates_on_the_same_split(tiny_model_dir, tmp_path):
    """--seed changes the search, never the data split: a seed-1 search must not calibrate on documents of the
    held-out split that every model is evaluated on (split seed 0)."""
    import safetensors.torch
    import torch

    anchors = []
    for seed in (0, 1):
        out = tmp_path / f"s{seed}"
        run_search(SearchConfig(model=str(tiny_model_dir), out=str(out), strategy="uniform", num_sequences=2,
                                seq_len=16, seed=seed, budget_tolerance=0.1, threads=1), progress=False)
        anchors.append(safetensors.torch.load_file(str(out / "search" / "anchor.safetensors")))
    assert anchors[0].keys() == anchors[1].keys()
    assert all(torch.equal(anchors[0][k], anchors[1][k]) for k in anchors[0])
