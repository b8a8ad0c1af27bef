"""Every verb leaves `<verb>.log` in its output; console log lines never land on a progress bar; a library
caller sees the same lines through the `tracenas` logger."""

from __future__ import annotations

import logging
import re

from conftest import save_tiny

from tracenas.cli import main
from tracenas.runtime.logs import TqdmHandler

TINY_SEARCH = ["--num-sequences", "2", "--seq-len", "32", "--rank", "4", "--population", "4", "--elites", "2",
               "--iterations", "1", "--min-layers", "2", "--budget", "0.7", "--budget-tolerance", "0.1"]


def test_each_verb_writes_its_log(tmp_path):
    model = save_tiny(tmp_path / "model")
    run = tmp_path / "run"
    assert main(["search", "--model", str(model), *TINY_SEARCH, "--out", str(run)]) == 0
    assert main(["export", str(run)]) == 0
    assert main(["recover", str(run / "model"), "--tokens", "512", "--seq-len", "32", "--out", str(run / "rec")]) == 0
    assert main(["eval", str(run / "model"), "--ppl-max-tokens", "256", "--ppl-seq-len", "32", "--tasks", "",
                 "--out", str(run / "eval")]) == 0
    assert main(["bench", str(run), "--prompt-len", "8", "--gen-len", "2", "--trials", "1", "--warmup", "0"]) == 0
    logs = {"search": run / "search.log", "export": run / "export.log", "recover": run / "rec" / "recover.log",
            "eval": run / "eval" / "eval.log", "bench": run / "bench.log"}
    expected = {"search": "best kl", "export": "exported", "recover": "recovering", "eval": "perplexity",
                "bench": "wrote"}
    for verb, path in logs.items():
        assert path.is_file(), verb
        assert expected[verb] in path.read_text(), (verb, path.read_text())


def test_log_lines_start_on_their_own_line_under_a_progress_bar(capsys):
    from tqdm import tqdm

    logger = logging.getLogger("tracenas.test_logs")
    handler = TqdmHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with tqdm(total=3, desc="search", file=__import__("sys").stderr, dynamic_ncols=False, ncols=60) as bar:
            bar.update(1)
            logger.info("generation 1/3: best -2.5")
            bar.update(1)
    finally:
        logger.removeHandler(handler)
    pieces = re.split(r"[\r\n]", capsys.readouterr().err)
    assert "generation 1/3: best -2.5" in [p.strip() for p in pieces]


def test_library_caller_sees_the_search_log(tmp_path):
    from tracenas.search.config import SearchConfig
    from tracenas.search.recipes.runner import run_search

    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    handler = Collect(level=logging.INFO)
    logging.getLogger("tracenas").addHandler(handler)
    try:
        model = save_tiny(tmp_path / "model")
        run_search(SearchConfig(model=str(model), out=str(tmp_path / "run"), num_sequences=2, seq_len=32, rank=4,
                                population=4, elites=2, iterations=1, min_layers=2, budget="0.7",
                                budget_tolerance=0.1), progress=False)
    finally:
        logging.getLogger("tracenas").removeHandler(handler)
    assert any(m.startswith("best kl") for m in seen)
    assert (tmp_path / "run" / "search.log").read_text().count("best kl") == 1


def test_library_run_takes_threads_from_its_config_and_restores_them(tmp_path):
    import json

    import torch

    from tracenas.search.config import SearchConfig
    from tracenas.search.recipes.runner import run_search

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        model = save_tiny(tmp_path / "model")
        run_search(SearchConfig(model=str(model), out=str(tmp_path / "run"), num_sequences=2, seq_len=32, rank=4,
                                population=4, elites=2, iterations=1, min_layers=2, budget="0.7",
                                budget_tolerance=0.1, threads=1), progress=False)
        assert torch.get_num_threads() == 2  # the caller's setting, back
        assert json.loads((tmp_path / "run" / "search" / "summary.json").read_text())["threads"] == 1
    finally:
        torch.set_num_threads(before)
