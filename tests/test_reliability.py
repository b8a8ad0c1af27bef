"""Never lose a user's work: exports that refuse foreign directories, resumes that keep the saved options and
survive a move, one-line I/O failures (disk full) that leave the disk as it was, and no leftovers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from conftest import save_tiny

from tracenas.cli import main
from tracenas.runtime.config import parse_budget_spec, parse_count
from tracenas.data import split_documents, token_batches
from tracenas.runtime.errors import BudgetError, TracenasError
from tracenas.search.config import SearchConfig
from tracenas.search.recipes.runner import run_search

SEARCH = dict(num_sequences=2, seq_len=32, rank=4, population=4, elites=2, min_layers=2, budget="0.7",
              budget_tolerance=0.1, micro_batch=2)
SEARCH_FLAGS = ["--num-sequences", "2", "--seq-len", "32", "--rank", "4", "--population", "4", "--elites", "2",
                "--min-layers", "2", "--budget", "0.7", "--budget-tolerance", "0.1", "--micro-batch", "2"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("rel") / "model")


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    from tracenas.data import load_split

    path = tmp_path_factory.mktemp("data") / "one.txt"
    path.write_text("\n\n".join(load_split(None, "eval")[:4]))  # one document, unlike the default corpus
    return path


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# 1. export never deletes what tracenas did not create ------------------------------------------------------
def test_export_refuses_foreign_dirs_but_replaces_its_own(model_dir, tmp_path):
    run = tmp_path / "run"
    run_search(SearchConfig(model=str(model_dir), out=str(run), iterations=1, **SEARCH), progress=False)
    (run / "my-notes.md").write_text("keep me")
    before = files(run)
    for out in (run, tmp_path):
        with pytest.raises(TracenasError, match="refusing to replace"):
            from tracenas.export.checkpoint import export_run
            from tracenas.export.config import ExportConfig

            export_run(ExportConfig(run_dir=str(run), out=str(out)))
    assert files(run) == before
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "model.safetensors").write_text("not from tracenas")  # right names, but no tracenas config
    assert main(["export", str(run), "--out", str(mine)]) == 2
    assert (mine / "model.safetensors").read_text() == "not from tracenas"
    assert main(["export", str(run), "--out", str(tmp_path / "empty")]) == 0
    assert main(["export", str(run), "--out", str(tmp_path / "empty"), "--dtype", "bfloat16"]) == 0  # ours: replaced
    assert files(run) == before  # --out elsewhere writes nothing into RUN_DIR (export.yaml goes with the model)
    assert (tmp_path / "empty" / "export.yaml").is_file()


# 2. and 3. a resume takes left-out options from the saved search, and a run directory can move --------------
def test_resume_without_data_or_model_continues_the_same_search(model_dir, text_file, tmp_path):
    ref, run = tmp_path / "ref", tmp_path / "run"
    common = ["--model", str(model_dir), "--data", str(text_file), *SEARCH_FLAGS]
    assert main(["search", *common, "--out", str(ref), "--iterations", "2"]) == 0
    assert main(["search", *common, "--out", str(run), "--iterations", "1"]) == 0
    saved = yaml.safe_load((run / "search.yaml").read_text())
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    shutil.move(run, moved)
    assert main(["search", "--out", str(moved), "--resume", "--iterations", "2"]) == 0
    after = yaml.safe_load((moved / "search.yaml").read_text())
    assert after["data"] == str(text_file) and after["model"] == str(model_dir)
    assert {k: v for k, v in after.items() if k not in ("iterations", "out")} == \
        {k: v for k, v in saved.items() if k not in ("iterations", "out")}
    # the resumed, moved search is the uninterrupted one
    assert (moved / "history.jsonl").read_text() == (ref / "history.jsonl").read_text()
    assert json.loads((moved / "arch.json").read_text())["genome"] == json.loads((ref / "arch.json").read_text())["genome"]


def test_failed_resume_leaves_the_saved_config(model_dir, tmp_path):
    run = tmp_path / "run"
    run_search(SearchConfig(model=str(model_dir), out=str(run), iterations=1, **SEARCH), progress=False)
    before = files(run)
    assert main(["search", "--out", str(run), "--resume", "--model", str(tmp_path / "other")]) == 2
    assert main(["search", "--out", str(run), "--resume", "--num-sequences", "3"]) == 2
    assert files(run) == before


def test_resume_trims_timings_to_the_saved_state(model_dir, tmp_path):
    run = tmp_path / "run"
    run_search(SearchConfig(model=str(model_dir), out=str(run), iterations=1, **SEARCH), progress=False)
    n = len((run / "history.jsonl").read_text().splitlines())
    for name in ("history.jsonl", "search/timings.jsonl"):  # records of candidates scored after the last save
        with open(run / name, "a") as fh:
            fh.write('{"index": 99}\n{"index": 100}\n')
    run_search(SearchConfig(model=str(model_dir), out=str(run), iterations=2, resume=True, **SEARCH), progress=False)
    history = [json.loads(x)["index"] for x in (run / "history.jsonl").read_text().splitlines()]
    timings = [json.loads(x)["index"] for x in (run / "search/timings.jsonl").read_text().splitlines()]
    assert history == timings == list(range(len(history))) and len(history) > n


# 4. numbers --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["1.5", "2.0", "inf", "-inf", "nan", "infM", "0", "-0.5", "1", "1.0"])
def test_budget_refused(text):
    with pytest.raises(BudgetError):
        parse_budget_spec(text)


@pytest.mark.parametrize("text,kind,value", [("0.6", "fraction", 0.6), ("81M", "count", 81e6),
                                             ("2.7B", "count", 2.7e9), ("123456", "count", 123456),
                                             ("1.5e6", "count", 1.5e6), ("1_000_000", "count", 1e6)])
def test_budget_accepted(text, kind, value):
    assert parse_budget_spec(text) == (kind, value)


@pytest.mark.parametrize("text", ["inf", "nan", "-inf", "lots", "1e999"])
def test_token_count_refused(text):
    with pytest.raises(TracenasError):
        parse_count(text, "a token count")


# 5. one document still has an eval split ----------------------------------------------------------------------
def test_single_document_is_split_by_position(text_file, caplog):
    from conftest import make_tiny_tokenizer

    doc = text_file.read_text()
    parts = [split_documents([doc], s) for s in ("calibration", "train", "eval")]
    assert all(len(p) == 1 and p[0] for p in parts)
    assert len(parts[0][0]) < len(parts[1][0]) and len(parts[2][0]) < len(parts[1][0])
    assert doc.startswith(parts[0][0]) and doc.rstrip().endswith(parts[2][0])
    assert "splitting each by position" in caplog.text
    tok = make_tiny_tokenizer()
    assert token_batches(tok, str(text_file), split="eval", num_sequences=2, seq_len=16).shape == (2, 16)


# 6. I/O failures are one line and leave nothing half-written ---------------------------------------------------
DISK_FULL = textwrap.dedent("""
    import resource, sys
    limit = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    from tracenas.cli import main
    sys.exit(main(sys.argv[2:]))
""")


def run_with_file_limit(limit: int, argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run([sys.executable, "-c", DISK_FULL, str(limit), *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def error_lines(stderr: str) -> list[str]:
    return [x for x in stderr.splitlines() if x.strip() and "it/s]" not in x and "%|" not in x
            and " INFO " not in x and " WARNING " not in x]


def test_disk_full_during_search_export_and_recovery(model_dir, tmp_path):
    run = tmp_path / "run"
    search = ["search", "--model", str(model_dir), *SEARCH_FLAGS, "--iterations", "1", "--out", str(run)]
    # search, 2 kB: fails on the importance file; nothing resumable was saved, so the new directory is gone
    # 3 kB: the state of generation 0 fits (2.5 kB) but arch.json does not; the state is kept and resumes
    for limit, kept in ((2000, False), (3000, True)):
        proc = run_with_file_limit(limit, search, tmp_path)
        assert proc.returncode == 1, proc.stderr
        assert "Traceback" not in proc.stderr and len(error_lines(proc.stderr)) == 1, proc.stderr
        assert "File too large" in error_lines(proc.stderr)[0]
        assert run.exists() == kept
    assert main(["search", "--out", str(run), "--resume"]) == 0
    shutil.rmtree(run)
    # export: no model directory, no staging directory
    run_search(SearchConfig(model=str(model_dir), out=str(run), iterations=1, **SEARCH), progress=False)
    before = files(run)
    proc = run_with_file_limit(20_000, ["export", str(run)], tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(error_lines(proc.stderr)) == 1 and "export to" in error_lines(proc.stderr)[0]
    assert files(run) == before and sorted(p.name for p in run.iterdir()) == sorted(
        {Path(k).parts[0] for k in before})
    assert main(["export", str(run)]) == 0
    # recovery: the first checkpoint does not fit; nothing resumable, so the output directory is gone
    rec = tmp_path / "rec"
    proc = run_with_file_limit(50_000, ["recover", str(run / "model"), "--tokens", "2048", "--seq-len", "32",
                                        "--save-every", "1", "--out", str(rec)], tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert len(error_lines(proc.stderr)) == 1, proc.stderr
    assert not rec.exists()


def test_export_elsewhere_does_not_write_into_the_run_dir(model_dir, tmp_path):
    """What makes a read-only RUN_DIR exportable with --out: not one write into it (checked by content and by
    the directory's mtime, since root, which runs CI, can write into a read-only directory)."""
    run = tmp_path / "run"
    run_search(SearchConfig(model=str(model_dir), out=str(run), iterations=1, **SEARCH), progress=False)
    before, mtime = files(run), run.stat().st_mtime_ns
    assert main(["export", str(run), "--out", str(tmp_path / "out")]) == 0
    assert files(run) == before and run.stat().st_mtime_ns == mtime
    assert (tmp_path / "out" / "export.yaml").is_file()


# 7. options are checked before anything is loaded ---------------------------------------------------------------
def test_options_checked_before_loading(tmp_path, capsys, monkeypatch):
    import tracenas.models.loading as loading

    def fail(*_a, **_k):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(loading, "load_model", fail)
    assert main(["search", "--population", "4", "--elites", "6", "--out", str(tmp_path / "o")]) == 2
    assert "--elites (6)" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# 8. leftovers of killed runs are cleaned up; a typo'd RUN_DIR is never created -----------------------------------
def test_export_cleans_staging_dirs_of_dead_processes(model_dir, tmp_path):
    run = tmp_path / "run"
    run_search(SearchConfig(model=str(model_dir), out=str(run), iterations=1, **SEARCH), progress=False)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = run / f".model.tmp-{dead}-abc123"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"\0" * 1000)
    live = run / f".model.tmp-{os.getppid()}-xyz"  # a process that is still running: not ours to remove
    live.mkdir()
    assert main(["export", str(run)]) == 0
    assert not stale.exists() and live.exists()


def test_export_with_arch_and_out_never_creates_run_dir(model_dir, tmp_path):
    run = tmp_path / "run"
    run_search(SearchConfig(model=str(model_dir), out=str(run), iterations=1, **SEARCH), progress=False)
    assert main(["export", str(tmp_path / "tpyo"), "--arch", str(run / "arch.json"),
                 "--out", str(tmp_path / "small")]) == 0
    assert not (tmp_path / "tpyo").exists() and (tmp_path / "small" / "config.json").is_file()


def test_recover_resume_removes_partial_checkpoint(model_dir, tmp_path):
    from tracenas.recover import RecoverConfig, recover

    out = tmp_path / "rec"
    cfg = dict(model=str(model_dir), tokens=4 * 4 * 32, seq_len=32, micro_batch=4, global_batch=4, save_every=1,
               out=str(out))
    recover(RecoverConfig(**cfg, stop_after_steps=2), progress=False)
    partial = out / "checkpoints" / ".tmp-step-3"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"\0" * 10)
    res = recover(RecoverConfig(**cfg, resume=True), progress=False)
    assert res.completed and not partial.exists()


# issue 17: results are ordinary files on a shared machine, and any scored candidate can be exported -------------
@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_writes_respect_the_umask(tmp_path, umask, mode):
    from tracenas.runtime.config import atomic_write_json

    old = os.umask(umask)
    try:
        atomic_write_json(tmp_path / "arch.json", {"a": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "arch.json").stat().st_mode & 0o777 == mode


def test_export_any_candidate_of_the_history(model_dir, tmp_path, capsys):
    from tracenas.models.pruned import load_pruned

    run = tmp_path / "run"
    run_search(SearchConfig(model=str(model_dir), out=str(run), iterations=2, **SEARCH), progress=False)
    history = [json.loads(x) for x in (run / "history.jsonl").read_text().splitlines()]
    best = json.loads((run / "arch.json").read_text())
    best_index = next(h["index"] for h in history if h["genome"] == best["genome"])
    assert main(["export", str(run)]) == 0
    assert main(["export", str(run), "--candidate", str(best_index)]) == 0
    assert (run / f"model-candidate-{best_index}" / "model.safetensors").read_bytes() == \
        (run / "model" / "model.safetensors").read_bytes()  # the best candidate is what the default export writes
    other = next(h for h in history if h["genome"] != best["genome"])
    assert main(["export", str(run), "--candidate", str(other["index"]), "--out", str(tmp_path / "other")]) == 0
    assert sum(p.numel() for p in load_pruned(tmp_path / "other").parameters()) == other["params"]
    capsys.readouterr()
    assert main(["export", str(run), "--candidate", str(len(history))]) == 2
    assert f"no candidate {len(history)}" in capsys.readouterr().err


def test_search_help_shows_what_each_preset_sets(capsys):
    with pytest.raises(SystemExit):
        main(["search", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "candidates per generation (preset: paper 30, quick 8)" in out


@pytest.fixture
def umask():
    """Set the process umask for one test (restored after)."""
    saved = os.umask(0o022)
    os.umask(saved)
    yield os.umask
    os.umask(saved)


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_written_weights_follow_the_umask(mask, umask, tmp_path):
    """Every *.safetensors tracenas writes (an export, a search's anchor, database blocks, a recovery checkpoint and
    its model) gets the umask's permissions, not safetensors' private 0600."""
    from test_export import make_run_dir

    from tracenas.prune.anchor import save_anchor
    from tracenas.prune.masking import Importance
    from tracenas.runtime.rundir import install_dir, save_tensors, staging_dir

    umask(mask)
    want = 0o666 & ~mask
    run_dir, base_dir, _ = make_run_dir(tmp_path)
    assert main(["export", str(run_dir)]) == 0
    assert main(["database", "build", str(tmp_path / "db"), "--model", str(base_dir), "--mlp-levels", "3",
                 "--calib-sequences", "2", "--calib-seq-len", "16"]) == 0
    import torch

    save_anchor(tmp_path / "anchor.safetensors", Importance(heads=[torch.ones(4)], channels=[torch.ones(8)]), None)
    staged = staging_dir(tmp_path / "staged")
    save_tensors({"x": torch.zeros(2)}, staged / "direct.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(staged / "library.safetensors"))  # written by someone else's code
    install_dir(staged, tmp_path / "staged")
    written = [*(run_dir / "model").glob("*.safetensors"), *(tmp_path / "db").glob("*.safetensors"),
               tmp_path / "anchor.safetensors", *(tmp_path / "staged").glob("*.safetensors")]
    assert len(written) >= 6
    assert {f.name: oct(f.stat().st_mode & 0o777) for f in written} == {f.name: oct(want) for f in written}


@pytest.mark.parametrize("model_type", ["llama", "evil-family"])
def test_a_model_folders_own_code_never_runs(model_type, tmp_path, capsys, monkeypatch):
    """A model folder whose config names its own Python (`auto_map`) is loaded with trust_remote_code=False, even
    when stdin would answer yes: its code (which would write a marker file) never runs. A known model_type loads
    with the installed code; an unknown one ends in one line."""
    import io

    base = save_tiny(tmp_path / "model", "llama-gqa")
    marker = tmp_path / "marker"
    code = f"open({str(marker)!r}, 'w').write('ran')\nfrom transformers import LlamaConfig, LlamaForCausalLM\n" \
           "class EvilConfig(LlamaConfig):\n    model_type = 'evil-family'\n" \
           "class EvilModel(LlamaForCausalLM):\n    config_class = EvilConfig\n"
    (base / "evil.py").write_text(code)
    cfg = json.loads((base / "config.json").read_text())
    cfg.update(model_type=model_type, auto_map={"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"})
    (base / "config.json").write_text(json.dumps(cfg))
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\ny\ny\n"))
    rc = main(["search", "--model", str(base), "--out", str(tmp_path / "run"), "--strategy", "uniform",
               "--num-sequences", "2", "--seq-len", "16", "--threads", "1", "--budget", "0.7",
               "--budget-tolerance", "0.1", "--min-layers", "2"])
    assert not marker.exists()
    err = capsys.readouterr().err
    if model_type == "llama":
        assert rc == 0
    else:
        assert rc == 2 and "Traceback" not in err
        assert "ships its own modeling code" in err.strip().splitlines()[-1]
