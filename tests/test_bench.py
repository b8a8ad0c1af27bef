"""`tracenas bench` end to end on tiny checkpoints (CPU). Checks the report's form, never timings."""

from __future__ import annotations

import json
import shutil
import statistics
import sys

import pytest
import torch
from test_export import make_run_dir

from tracenas.bench.runner import BenchConfig, measure, random_prompt, run_bench
from tracenas.cli import main
from tracenas.runtime.errors import RunDirError, TracenasError
from tracenas.models.pruned import load_pruned

TINY = ["--prompt-len", "16", "--gen-len", "4", "--trials", "3", "--warmup", "1", "--device", "cpu"]
MODEL_KEYS = {"model", "params", "ttft_ms", "tpot_ms", "throughput_tok_s", "total_ms", "weights_mb", "peak_mem_mb",
              "peak_extra_mem_mb", "peak_mem_method", "trials"}


@pytest.fixture(scope="module")
def exported_run(tmp_path_factory):
    run_dir, base_dir, _ = make_run_dir(tmp_path_factory.mktemp("bench"))
    assert main(["export", str(run_dir)]) == 0
    return run_dir, base_dir


def check_model_entry(entry: dict, trials: int) -> None:
    assert MODEL_KEYS <= set(entry)
    for key in ("ttft_ms", "tpot_ms", "throughput_tok_s", "total_ms"):
        assert entry[key] > 0
    for key in ("ttft_ms", "tpot_ms", "total_ms"):
        assert len(entry["trials"][key]) == trials
        assert entry[key] == pytest.approx(statistics.median(entry["trials"][key]))
    assert entry["total_ms"] >= entry["ttft_ms"]
    if sys.platform.startswith("linux"):
        assert entry["peak_mem_mb"] >= entry["weights_mb"] > 0


def test_bench_run_dir(exported_run, capsys):
    run_dir, base_dir = exported_run
    assert main(["bench", str(run_dir), *TINY]) == 0
    out = capsys.readouterr().out
    assert "TTFT (ms)" in out and "speedup: prefill" in out
    report = json.loads((run_dir / "bench.json").read_text())
    assert set(report["models"]) == {"base", "pruned"}
    assert report["models"]["base"]["model"] == str(base_dir)
    assert report["models"]["pruned"]["model"] == str(run_dir / "model")
    for entry in report["models"].values():
        check_model_entry(entry, trials=3)
    pruned = load_pruned(run_dir / "model")
    assert report["models"]["pruned"]["params"] == sum(p.numel() for p in pruned.parameters())
    assert report["models"]["pruned"]["params"] < report["models"]["base"]["params"]
    s = report["speedup"]
    b, p = report["models"]["base"], report["models"]["pruned"]
    assert s["prefill"] == pytest.approx(b["ttft_ms"] / p["ttft_ms"])
    assert s["decode"] == pytest.approx(b["tpot_ms"] / p["tpot_ms"])
    assert s["throughput"] == pytest.approx(p["throughput_tok_s"] / b["throughput_tok_s"])
    assert s["params"] == pytest.approx(report["models"]["pruned"]["params"] / report["models"]["base"]["params"])
    c = report["config"]
    assert (c["prompt_len"], c["gen_len"], c["trials"], c["warmup"], c["device"], c["dtype"]) == (
        16, 4, 3, 1, "cpu", "float32")


def test_bench_model_dir_with_base_and_out(exported_run, tmp_path):
    run_dir, base_dir = exported_run
    model_dir = shutil.copytree(run_dir / "model", tmp_path / "pruned")  # not inside a run directory
    out = tmp_path / "reports" / "b.json"
    assert main(["bench", str(model_dir), "--base", str(base_dir), "--out", str(out), *TINY]) == 0
    report = json.loads(out.read_text())
    assert set(report["models"]) == {"base", "pruned"} and report["speedup"]
    # no base known: the pruned model alone, report beside it (never inside the checkpoint)
    before = sorted(p.name for p in model_dir.iterdir())
    assert main(["bench", str(model_dir), *TINY]) == 0
    assert sorted(p.name for p in model_dir.iterdir()) == before
    alone = json.loads((tmp_path / "pruned.bench.json").read_text())
    assert set(alone["models"]) == {"pruned"} and alone["speedup"] is None


def test_measure_forces_length_and_cpu_defaults():
    from conftest import make_tiny

    model = make_tiny("llama-gqa")
    prompt = random_prompt(128, 2, 8, seed=0)
    assert torch.equal(prompt, random_prompt(128, 2, 8, seed=0))
    r = measure(model, prompt, gen_len=6, trials=2, warmup=0)
    assert r["throughput_tok_s"] == pytest.approx(2 * 6 / (r["total_ms"] / 1e3))
    cfg = BenchConfig(device="cpu").resolved()
    assert (cfg.prompt_len, cfg.gen_len, cfg.trials, cfg.dtype) == (256, 32, 5, "float32")


def test_bench_errors(exported_run, tmp_path, capsys):
    run_dir, _ = exported_run
    assert main(["bench", str(tmp_path / "absent"), *TINY]) == 2
    assert "no such model or run directory" in capsys.readouterr().err
    bare = tmp_path / "run"
    bare.mkdir()
    shutil.copy(run_dir / "arch.json", bare / "arch.json")
    with pytest.raises(RunDirError, match="tracenas export"):
        run_bench(bare, BenchConfig(device="cpu", prompt_len=8, gen_len=2, trials=1))
    assert main(["bench", str(run_dir), "--gen-len", "1", "--device", "cpu"]) == 2
    assert "--gen-len must be at least 2" in capsys.readouterr().err
    with pytest.raises(TracenasError, match="neither a run directory"):
        run_bench(tmp_path, BenchConfig(device="cpu"))


def test_trials_interleave_and_alternate_which_model_goes_first(monkeypatch):
    """One trial of each model per round, the order alternating (A B, B A, ...): load that changes during the
    bench then hits both sides alike."""
    from conftest import make_tiny

    from tracenas.bench import runner

    order = []
    real = runner._Timer.trial

    def tracked(self, record=True):
        if record:
            order.append(self.name)
        return real(self, record)

    monkeypatch.setattr(runner._Timer, "trial", tracked)
    a, b = make_tiny("llama-gqa"), make_tiny("qwen2-mha")
    prompt = random_prompt(128, 1, 8, seed=0)
    real_init = runner._Timer.__init__

    def named(self, model, prompt, gen_len):
        real_init(self, model, prompt, gen_len)
        self.name = "base" if model is a else "pruned"

    monkeypatch.setattr(runner._Timer, "__init__", named)
    res = runner.measure_interleaved({"base": a, "pruned": b}, prompt, gen_len=3, trials=4, warmup=1)
    assert order == ["base", "pruned", "pruned", "base", "base", "pruned", "pruned", "base"]
    assert all(len(r["trials"]["ttft_ms"]) == 4 and len(r["spread"]["ttft_ms"]) == 2 for r in res.values())


def entry(ttft, tpot, total):
    import statistics

    return {"ttft_ms": statistics.median(ttft), "tpot_ms": statistics.median(tpot), "total_ms": statistics.median(total),
            "throughput_tok_s": 1e3 / statistics.median(total), "params": 100, "peak_mem_mb": None,
            "trials": {"ttft_ms": ttft, "tpot_ms": tpot, "total_ms": total}}


def test_a_speedup_the_trials_do_not_support_is_never_printed():
    from tracenas.bench.report import format_speedup
    from tracenas.bench.runner import speedup

    # steady: every paired ratio near 2x -> printed with its range
    steady = speedup(entry([200, 210, 190], [20, 21, 19], [300, 310, 290]), entry([100, 104, 96], [10, 11, 9],
                                                                                   [150, 160, 140]))
    assert all(steady["supported"].values())
    assert "prefill 2.00x (paired trials" in format_speedup(steady)
    # the base was timed while another job ran (first trial 14x slower): the medians alone would print a
    # speedup, the paired ratios straddle a factor over 2 -> not printed
    loaded = speedup(entry([2100, 150, 160], [20, 11, 10], [3000, 200, 210]), entry([150, 152, 148], [10, 10, 10],
                                                                                    [200, 199, 201]))
    assert not loaded["supported"]["prefill"]
    text = format_speedup(loaded)
    assert "prefill not supported by the trials" in text and f"prefill {loaded['prefill']:.2f}x" not in text
    # a pruned model no faster than its base: ratios on both sides of 1 -> not supported either
    tie = speedup(entry([100, 100, 100], [10, 10, 10], [150, 150, 150]), entry([90, 110, 101], [9, 11, 10],
                                                                                [140, 160, 150]))
    assert not any(tie["supported"].values())
