import json

import pytest

from tracenas.cli import main
from tracenas.pipeline.config import RunConfig
from tracenas.pipeline.runner import run_pipeline

TINY_RUN = dict(budget="0.7", budget_tolerance=0.1, population=4, elites=2, iterations=2, num_sequences=2, seq_len=32, rank=4,
                min_layers=2, recover_tokens="2k", recover_seq_len=32, ppl_max_tokens=512, bench_prompt_len=16,
                bench_gen_len=4, bench_trials=1)


def test_run_produces_complete_directory_and_skips_finished_stages(tiny_model_dir, tmp_path, caplog):
    out = tmp_path / "run"
    cfg = RunConfig.from_flags(model=str(tiny_model_dir), out=str(out), **TINY_RUN)
    run_pipeline(cfg, progress=False)
    for name in ("run.yaml", "arch.json", "history.jsonl", "search/state.json", "model/config.json",
                 "model/model.safetensors", "recover/model/config.json", "recover/recover.json",
                 "eval/base/results.json", "eval/pruned/results.json", "eval/recovered/results.json", "bench.json",
                 "report.md"):
        assert (out / name).exists(), name
    report = (out / "report.md").read_text()
    settings = json.loads((out / "model" / "reconstruction.json").read_text())["settings"]
    assert (settings["inputs"], settings["importance"]) == ("dense", "obs")  # the default export re-solves
    assert "proxy: kl" in (out / "run.yaml").read_text()  # the quick preset's proxy, resolved and recorded
    assert json.loads((out / "arch.json").read_text())["proxy"] == "kl" and "proxy `kl`" in report
    assert "## Architecture" in report and "## Quality" in report and "## Speed" in report
    assert f"Recovery (distilled from {tiny_model_dir})" in report  # the default recovery loss, said in the report
    ppl = {n: json.loads((out / "eval" / n / "results.json").read_text())["perplexity"]["ppl"]
           for n in ("base", "pruned", "recovered")}
    assert all(v > 1 for v in ppl.values())
    assert ppl["recovered"] < ppl["pruned"]  # recovery helps the zero-shot pruned model
    stamp = (out / "model" / "model.safetensors").stat().st_mtime_ns
    caplog.clear()
    with caplog.at_level("INFO", logger="tracenas"):
        run_pipeline(cfg, progress=False)
    assert (out / "model" / "model.safetensors").stat().st_mtime_ns == stamp
    assert "search: complete, skipped" in caplog.text and "recover: complete, skipped" in caplog.text


def test_run_rejects_unknown_stage(tmp_path, capsys):
    assert main(["run", "--out", str(tmp_path / "x"), "--stages", "search,dance"]) == 2
    assert "unknown stage" in capsys.readouterr().err


def test_run_exports_with_reconstruction(tiny_model_dir, tmp_path):
    """`tracenas run --reconstruct sequential --importance obs`: the export stage re-solves the weights."""
    out = tmp_path / "run"
    assert main(["run", "--model", str(tiny_model_dir), "--out", str(out), "--stages", "search,export",
                 "--reconstruct", "sequential", "--importance", "obs", "--budget", "0.7", "--budget-tolerance", "0.1",
                 "--population", "4", "--elites", "2", "--iterations", "1", "--num-sequences", "2", "--seq-len", "32",
                 "--min-layers", "2"]) == 0
    record = json.loads((out / "model" / "reconstruction.json").read_text())
    assert record["settings"]["inputs"] == "sequential" and record["settings"]["importance"] == "obs"
    assert "reconstruct: sequential" in (out / "run.yaml").read_text()


def test_run_refuses_obs_without_reconstruction(tmp_path, capsys):
    assert main(["run", "--out", str(tmp_path / "x"), "--reconstruct", "none", "--importance", "obs"]) == 2
    assert "needs --reconstruct dense or sequential" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_run_passes_recovery_dtype_and_defaults_the_teacher_to_the_base(tiny_model_dir, tmp_path, monkeypatch):
    """`--recover-dtype` reaches the recovery; `--distill` on the embedded default distills from that default."""
    import tracenas.recover
    from tracenas.models.defaults import DEFAULT_MODEL

    out = tmp_path / "run"
    run_pipeline(RunConfig.from_flags(model=str(tiny_model_dir), out=str(out), stages="search,export", **TINY_RUN), progress=False)
    seen = []
    monkeypatch.setattr(tracenas.recover, "recover", lambda rc, progress=True: seen.append(rc))
    run_pipeline(RunConfig.from_flags(out=str(out), stages="recover", recover_dtype="bfloat16", distill=True, **TINY_RUN),
                 progress=False)
    assert (seen[0].dtype, seen[0].distill, seen[0].teacher) == ("bfloat16", True, DEFAULT_MODEL)
    # by default the recovery distills from the run's base model; --distill false is the plain next-token loss
    run_pipeline(RunConfig.from_flags(model=str(tiny_model_dir), out=str(out), stages="recover", **TINY_RUN), progress=False)
    assert (seen[1].dtype, seen[1].distill, seen[1].teacher) == ("auto", True, str(tiny_model_dir))
    run_pipeline(RunConfig.from_flags(model=str(tiny_model_dir), out=str(out), stages="recover", distill=False, **TINY_RUN),
                 progress=False)
    assert (seen[2].distill, seen[2].teacher) == (False, None)


def test_run_config_reads_sections_and_flat_keys(tmp_path):
    """run.yaml has one section per stage; `--config` reads sections, flat flag names (the run.yaml of earlier
    versions) or both, and flags override the file. Unknown keys are one line."""
    import argparse

    import yaml

    from tracenas.pipeline.config import FLAGS, add_run_arguments, run_config_from_args
    from tracenas.runtime.errors import TracenasError

    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"budget": "0.5", "recover_tokens": "2k", "out": "runs/x",
                                    "search": {"population": 9, "elites": 2}, "eval": {"micro_batch": 2}}))
    cfg = run_config_from_args(parser.parse_args(["--config", str(path), "--budget", "0.4"]))
    assert (cfg.search.budget, cfg.search.population, cfg.recover.tokens, cfg.eval.micro_batch, cfg.out) == (
        "0.4", 9, 2000, 2, "runs/x")
    assert cfg.export.reconstruct == "dense" and cfg.recover.distill  # the run's defaults for its sections
    assert set(FLAGS) <= {a.dest for a in parser._actions}
    for bad in ({"bogus": 1}, {"search": {"bogus": 1}}, {"search": 3}):
        path.write_text(yaml.safe_dump(bad))
        with pytest.raises(TracenasError, match="bogus|section"):
            run_config_from_args(parser.parse_args(["--config", str(path)]))


def test_run_yaml_has_a_section_per_stage(tiny_model_dir, tmp_path):
    import yaml

    out = tmp_path / "run"
    run_pipeline(RunConfig.from_flags(model=str(tiny_model_dir), out=str(out), stages="search", **TINY_RUN),
                 progress=False)
    saved = yaml.safe_load((out / "run.yaml").read_text())
    assert {"search", "export", "recover", "eval", "bench"} <= set(saved)
    assert saved["search"]["model"] == str(tiny_model_dir) and saved["search"]["out"] == str(out)
    assert saved["recover"]["model"] == str(out / "model") and saved["export"]["reconstruct"] == "dense"
    again = RunConfig.from_flags(**{k: v for k, v in saved.items() if k != "stages"})  # run.yaml reads back
    assert again.search.population == saved["search"]["population"]
