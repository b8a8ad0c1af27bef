"""Bad inputs across the verbs, as a new user types them: each is refused with exit code 2 (1 for an I/O
failure), exactly one error line on stderr, no traceback, and the files on disk exactly as they were."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
from pathlib import Path

import pytest
from conftest import save_tiny

from tracenas.cli import main
from tracenas.search.config import SearchConfig
from tracenas.search.recipes.runner import run_search

TINY = ["--num-sequences", "2", "--seq-len", "32", "--rank", "4", "--population", "4", "--elites", "2",
        "--iterations", "1", "--min-layers", "2", "--budget", "0.7", "--budget-tolerance", "0.1"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A directory a user might have: a model, a finished search run with its export, data, odd files."""
    ws = tmp_path_factory.mktemp("ws")
    model = save_tiny(ws / "model")
    run_search(SearchConfig(model=str(model), out=str(ws / "run"), num_sequences=2, seq_len=32, rank=4,
                            population=4, elites=2, iterations=1, min_layers=2, budget="0.7",
                            budget_tolerance=0.1), progress=False)
    assert main(["export", str(ws / "run")]) == 0
    (ws / "run" / "notes.txt").write_text("my own notes\n")
    (ws / "file.txt").write_text("a file, not a directory\n")
    (ws / "data.csv").write_text("text\nhello\n")
    (ws / "garbage.gguf").write_bytes(os.urandom(100))
    (ws / "truncated.gguf").write_bytes(b"GGUF" + struct.pack("<I", 3) + struct.pack("<Q", 7))
    (ws / "noweights").mkdir()
    shutil.copy(model / "config.json", ws / "noweights" / "config.json")
    (ws / "corrupt_run").mkdir()
    (ws / "corrupt_run" / "arch.json").write_text("{ not json")
    (ws / "list.yaml").write_text("- a\n- b\n")
    return ws


def tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else (-1, 0)
            for p in sorted(root.rglob("*"))}


M, R, E = "{ws}/model", "{ws}/run", "{ws}/run/model"
CASES = [
    # search: option values
    ("budget fraction above 1", ["search", "--budget", "1.5"], "fraction above 1"),
    ("budget inf", ["search", "--budget", "inf"], "cannot parse budget"),
    ("budget nan", ["search", "--budget", "nan"], "cannot parse budget"),
    ("budget text", ["search", "--budget", "abc"], "cannot parse budget"),
    ("budget zero", ["search", "--budget", "0"], "must be positive"),
    ("budget unreachable", ["search", "--model", M, *TINY[:-4], "--budget", "10"], "outside what this search space"),
    ("elites >= population", ["search", "--model", M, "--population", "4", "--elites", "4"], "--elites (4)"),
    ("crossover above 1", ["search", "--crossover", "2"], "--crossover is a probability"),
    ("crossover inf", ["search", "--crossover", "inf"], "finite number"),
    ("population zero", ["search", "--population", "0"], "--population must be a positive"),
    ("seq-len one", ["search", "--seq-len", "1"], "--seq-len must be at least 2"),
    ("tolerance 1", ["search", "--budget-tolerance", "1"], "--budget-tolerance"),
    ("unknown preset", ["search", "--preset", "fast"], "invalid choice"),
    ("threads zero", ["search", "--threads", "0"], "--threads must be a positive integer"),
    ("int given text", ["search", "--population", "many"], "invalid int value"),
    # search: inputs
    ("missing model dir", ["search", "--model", "{ws}/nope"], "no such model"),
    ("garbage gguf", ["search", "--model", "{ws}/garbage.gguf", *TINY], "not a GGUF model"),
    ("truncated gguf", ["search", "--model", "{ws}/truncated.gguf", *TINY], "truncated or not a GGUF"),
    ("model dir without weights", ["search", "--model", "{ws}/noweights", *TINY], "cannot load the weights"),
    ("missing data file", ["search", "--model", M, "--data", "{ws}/missing.txt"], "no such file"),
    ("unsupported data file", ["search", "--model", M, "--data", "{ws}/data.csv"], "unsupported data file"),
    ("out is a file", ["search", "--model", M, *TINY, "--out", "{ws}/file.txt"], "is an existing file"),
    ("resume without a search", ["search", "--model", M, *TINY, "--out", "{ws}/model", "--resume"],
     "no saved search"),
    ("resume with another seed", ["search", "--out", R, "--resume", "--seed", "3"], "--seed 0 -> 3"),
    ("new search over a search", ["search", "--model", M, *TINY, "--out", R], "already holds a search"),
    ("missing config file", ["search", "--config", "{ws}/nope.yaml"], "no such config file"),
    ("config not a mapping", ["search", "--config", "{ws}/list.yaml"], "must hold a mapping"),
    # export
    ("export into the run dir", ["export", R, "--out", R], "refusing to replace"),
    ("export into cwd", ["export", R, "--out", "."], "refusing to replace"),
    ("export into a file", ["export", R, "--out", "{ws}/file.txt"], "not a directory"),
    ("export missing run", ["export", "{ws}/nope"], "no such run directory"),
    ("export corrupt arch", ["export", "{ws}/corrupt_run"], "is corrupt"),
    ("export bad dtype", ["export", R, "--dtype", "int8"], "invalid choice"),
    ("run bad recovery dtype", ["run", "--recover-dtype", "int8"], "invalid choice"),
    # recover
    ("recover tokens inf", ["recover", E, "--tokens", "inf", "--out", "{ws}/rec"], "cannot read a token count"),
    ("recover tokens nan", ["recover", E, "--tokens", "nan", "--out", "{ws}/rec"], "cannot read a token count"),
    ("recover lr inf", ["recover", E, "--lr", "inf", "--out", "{ws}/rec"], "finite number"),
    ("recover missing model", ["recover", "{ws}/nope", "--out", "{ws}/rec"], "no such model"),
    ("recover out is a file", ["recover", E, "--out", "{ws}/file.txt"], "is an existing file"),
    ("recover bad warmup", ["recover", E, "--warmup-frac", "2", "--out", "{ws}/rec"], "schedule fractions"),
    # eval, bench, run
    ("eval missing model", ["eval", "{ws}/nope"], "no such model"),
    ("bench missing model", ["bench", "{ws}/nope"], "no such model or run directory"),
    ("bench one new token", ["bench", R, "--gen-len", "1"], "--gen-len must be at least 2"),
    ("run budget above 1", ["run", "--budget", "1.5", "--out", "{ws}/new_run"], "fraction above 1"),
    ("run unknown stage", ["run", "--stages", "search,deploy", "--out", "{ws}/new_run"], "unknown stage"),
]


def test_enough_cases():
    assert len(CASES) >= 30


def invoke(argv: list[str]) -> int:
    """`tracenas ARGV` in this process; argparse's usage errors exit, the verbs return a code."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return int(exit_.code)


@pytest.mark.parametrize("name,argv,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_touches_nothing(workspace, name, argv, expected, capsys, monkeypatch):
    monkeypatch.chdir(workspace)
    before = tree(workspace)
    capsys.readouterr()
    code = invoke([a.replace("{ws}", str(workspace)) for a in argv])
    err = capsys.readouterr().err
    # what is left once progress bars and INFO/WARNING log lines (timestamped) are set aside
    lines = [line for line in err.splitlines() if line.strip() and "it/s]" not in line and "%|" not in line
             and not re.match(r"^\d\d:\d\d:\d\d (INFO|WARNING) ", line)]
    assert code == 2, (name, err)
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("tracenas"), lines
    assert expected in lines[0], lines[0]
    assert tree(workspace) == before, f"{name} changed the files on disk"


def test_export_into_run_dir_keeps_everything(workspace):
    """The data-loss case in full: the run's own files and the user's notes survive, byte for byte."""
    run = workspace / "run"
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert main(["export", str(run), "--out", str(run)]) == 2
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    assert json.loads((run / "arch.json").read_text())["genome"]
