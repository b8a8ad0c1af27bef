"""benchmarks/compare_table.py: the strategy table's means, spreads, winners and reference line, from fake run dirs;
and compare_strategies.py's lock on a shared root."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import threading
import time
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str):
    """benchmarks/NAME.py as a module (the scripts import each other, so benchmarks/ is on the path meanwhile)."""
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


@pytest.fixture(scope="module")
def compare_table():
    return load_benchmark("compare_table")


def write(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def eval_result(ppl: float, acc: float | None = None, model_type: str = "llama", params: int = 1000) -> dict:
    out = {"model": {"model_type": model_type, "params": params}, "perplexity": {"ppl": ppl}}
    if acc is not None:
        out["tasks"] = {"local_analogies": {"acc": acc}}
    return out


def fake_run(run: Path, ppl: dict[str, float], family: str = "llama", base: int = 1000, finished: bool = True) -> None:
    write(run / "arch.json", {"model": {"shape": {"family": family}}, "base_params": base, "params": 600,
                              "budget": 600, "num_layers_kept": 4, "layers": [{}] * 4, "strategy": "evolution",
                              "search_cost": {"candidate_evaluations": 10, "wall_seconds": 5.0}})
    write(run / "search" / "summary.json", {"device": "cpu"})
    if finished:
        for name, value in ppl.items():
            write(run / "eval" / name / "results.json", eval_result(value, 0.5 if name == "recovered" else None))


def test_means_spreads_winners_and_the_dense_line(tmp_path, compare_table):
    root = tmp_path / "cmp"
    figures = {  # (row, seed) -> recovered in-domain / out-of-domain perplexity
        ("evolution-kl", 0): (50.0, 100.0), ("evolution-kl", 1): (54.0, 90.0),
        ("uniform", 0): (60.0, 95.0), ("uniform", 1): (52.0, 120.0),
    }
    for (row, seed), (rec, ood) in figures.items():
        fake_run(root / "b0.6" / f"s{seed}" / row,
                 {"pruned": 100.0 + seed, "recovered": rec, "pruned-ood": 200.0, "recovered-ood": ood})
    fake_run(root / "b0.6" / "s2" / "evolution-kl", {}, finished=False)  # still searching: not in the table
    write(root / "dense" / "in-domain" / "results.json", eval_result(18.0, 0.86, params=1000))
    write(root / "dense" / "ood" / "results.json", eval_result(29.5, params=1000))

    text, rows = compare_table.table(compare_table.runs(root), [compare_table.dense(root)])

    assert "Dense llama 0.0M (unpruned): PPL 18.00 in domain, 29.50 out of domain, task acc 0.860." in text
    by_row = {r["row"]: r for r in rows}
    assert set(by_row) == {"evolution-kl", "uniform"}
    assert by_row["evolution-kl"]["seeds"] == [0, 1]  # the unfinished seed 2 is left out
    assert by_row["evolution-kl"]["recovered"] == pytest.approx(52.0)
    assert "| 52.00 ± 2.83 |" in text  # mean and sample standard deviation of 50 and 54
    assert "best recovered `evolution-kl`" in text  # 52.0 against uniform's 56.0
    assert "best recovered out of domain `evolution-kl`" in text  # 95.0 against 107.5
    # a mean can hide a split: each seed's winner is printed too
    assert "s0 `evolution-kl` (2 rows), s1 `uniform` (2 rows)" in text
    assert "out of domain per seed: s0 `uniform` (2 rows), s1 `evolution-kl` (2 rows)" in text


def test_models_and_recovery_dtypes_are_separate_tables(tmp_path, compare_table):
    a, b = tmp_path / "a", tmp_path / "b"
    fake_run(a / "b0.6" / "s0" / "uniform", {"pruned": 10.0, "recovered": 5.0}, family="llama", base=135_000_000)
    fake_run(b / "b0.6" / "s0" / "uniform", {"pruned": 30.0, "recovered": 9.0}, family="qwen2", base=630_000_000)
    text, rows = compare_table.table(compare_table.runs(a) + compare_table.runs(b))
    assert len(rows) == 2 and {r["device"] for r in rows} == {"llama 135.0M, cpu, recovery fp32",
                                                              "qwen2 630.0M, cpu, recovery fp32"}
    assert text.count("| budget | row |") == 2


def test_update_replaces_only_the_marked_block(tmp_path, compare_table):
    doc = tmp_path / "comparison.md"
    doc.write_text("intro\n<!-- cpu-table -->\nold table\n<!-- /cpu-table -->\nafter\n")
    compare_table.update(doc, "cpu-table", "\nnew table\n")
    assert doc.read_text() == "intro\n<!-- cpu-table -->\nnew table\n<!-- /cpu-table -->\nafter\n"
    with pytest.raises(SystemExit, match="expected one"):
        compare_table.update(doc, "gpu-table", "x")


def test_distillation_is_compared_on_the_seeds_both_recoveries_ran(tmp_path, compare_table):
    root = tmp_path / "cmp"
    for seed, (plain, distilled) in enumerate([((58.0, 127.0), (53.0, 112.0)), ((59.0, 130.0), None)]):
        fake_run(root / "b0.6" / f"s{seed}" / "evolution-kl",
                 {"pruned": 135.0, "recovered": plain[0], "pruned-ood": 258.0, "recovered-ood": plain[1]})
        if distilled:
            fake_run(root / "b0.6" / f"s{seed}" / "evolution-kl-distill",
                     {"pruned": 135.0, "recovered": distilled[0], "pruned-ood": 258.0, "recovered-ood": distilled[1]})
    for run in root.glob("b0.6/s*/*"):  # both exported with reconstruction, as compare_strategies does
        (run / "model").mkdir()
        (run / "model" / "reconstruction.json").write_text("{}")
    text, _ = compare_table.table(compare_table.runs(root))
    assert ("against plain recovery of the same models (seeds 0): in domain 58.00 -> 53.00, out of domain "
            "127.00 -> 112.00 (better out of domain on 1 of 1 seeds)") in text
    assert "| 0 | 58.00 | 53.00 | 127.00 | 112.00 |" in text  # and seed by seed (seed 1 has no distilled run)
    assert "| 1 | 59.00 |" not in text
    # the distilled row does not compete with the search rows, and the winners are flagged as unequal-seed means
    assert "best recovered `evolution-kl`" in text and "(means over unequal sets of seeds" not in text


def test_saved_records_print_the_same_table_and_a_rerun_replaces_its_record(tmp_path, compare_table):
    root, store = tmp_path / "cmp", tmp_path / "results" / "cpu.jsonl"
    for seed, rec in enumerate((50.0, 54.0)):
        fake_run(root / "b0.6" / f"s{seed}" / "evolution-kl", {"pruned": 100.0, "recovered": rec})
    write(root / "dense" / "in-domain" / "results.json", eval_result(18.0, 0.86))
    write(root / "dense" / "ood" / "results.json", eval_result(29.5))
    runs, dense = compare_table.load(root)
    assert compare_table.save_records(store, runs, dense) == 3  # two runs and the dense model
    assert compare_table.table(*compare_table.load(store))[0] == compare_table.table(runs, dense)[0]

    # the run directories may go; a rerun of seed 1 with other figures replaces its record, seed 0's stays
    fake_run(root / "b0.6" / "s1" / "evolution-kl", {"pruned": 100.0, "recovered": 56.0})
    assert compare_table.save_records(store, compare_table.runs(root)[1:], []) == 3
    (root / "b0.6" / "s0" / "evolution-kl" / "arch.json").unlink()
    _, rows = compare_table.table(*compare_table.load(store))
    assert rows[0]["per_seed"][0]["recovered"] == 50.0 and rows[0]["per_seed"][1]["recovered"] == 56.0
    with pytest.raises(SystemExit, match="neither a run root nor a records file"):
        compare_table.load(tmp_path / "missing")


def test_two_invocations_evaluate_the_dense_model_once(tmp_path, monkeypatch):
    """Two `compare_strategies.py` invocations on one root (one row each, side by side) share the dense reference
    evals: the second waits on the first's lock and finds its results, instead of running the same evals again."""
    module = load_benchmark("compare_strategies")
    calls: list[str] = []
    both_started = threading.Barrier(2)

    def fake_eval(self, args, log):
        out = Path(args[args.index("--out") + 1])
        calls.append(out.name)
        time.sleep(0.2)  # an eval takes a while: without the lock the other invocation starts the same one meanwhile
        write(out / "results.json", eval_result(10.0))
        return 0.0

    monkeypatch.setattr(module.Bench, "tracenas", fake_eval)
    args = argparse.Namespace(out=tmp_path, model=None, no_tasks=True, data=None, device="cpu")

    def invocation():
        bench = module.Bench(args)
        both_started.wait()
        bench.dense()

    threads = [threading.Thread(target=invocation) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(calls) == ["in-domain", "ood"]
