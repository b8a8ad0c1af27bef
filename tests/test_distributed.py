"""Candidates spread over torchrun ranks: the same search as one process (tracenas.runtime.distributed, gloo on CPU)."""

import json
import os
import subprocess
import sys

import pytest

from tracenas.arch import Genome
from tracenas.runtime.distributed import Dist, balanced_shards, map_ranks
from tracenas.search.config import SearchConfig
from tracenas.search.strategies.evolution import Evolution
from tracenas.search.recipes.runner import run_search

TINY = dict(preset="quick", num_sequences=2, seq_len=32, rank=4, population=5, elites=2, iterations=3,
            budget="0.7", budget_tolerance=0.1, min_layers=2, micro_batch=2)


def test_balanced_shards_cover_every_item_once_and_balance_the_cost():
    costs = [9, 1, 1, 1, 1, 1, 1, 1, 1, 1]
    shards = balanced_shards(costs, 2)
    assert sorted(i for s in shards for i in s) == list(range(10))
    assert sorted(sum(costs[i] for i in s) for s in shards) == [9, 9]
    assert balanced_shards([1.0] * 3, 4) == [[0], [1], [2], []]
    assert all(s == sorted(s) for s in shards)


def test_one_process_yields_each_result_as_it_is_computed():
    seen = []
    results = map_ranks(lambda x: seen.append(x) or x * 2, [1, 2, 3], Dist())
    assert next(results) == 2 and seen == [1]  # lazy: the search saves its state after every candidate
    assert list(results) == [4, 6]


def test_strategy_scores_each_new_genome_once_in_one_batch():
    from tracenas.arch import SearchSpace
    from tracenas.search.strategies.state import EvolutionConfig
    from conftest import make_tiny
    from tracenas.models import get_adapter

    space = SearchSpace(get_adapter(make_tiny("llama-gqa")).shape(), min_layers=2)
    batches = []

    def score_batch(genomes):
        batches.append(list(genomes))
        return [(float(i), {}) for i, _ in enumerate(genomes)]

    strategy = Evolution(EvolutionConfig(population=4, elites=2, iterations=2, seed=0), space, space.base_params(),
                         score=lambda g: pytest.fail("scored one by one"), score_batch=score_batch)
    full, half = Genome.full(4), space.snap(Genome((True,) * 4, (0.5,) * 4, (0.5,) * 4))
    out = strategy.evaluate([full, half, full])
    assert batches == [[full, half]]
    assert [c.score for c in out] == [0.0, 1.0, 0.0]
    assert strategy.state.history_len == 2
    strategy.evaluate([half, full])
    assert len(batches) == 2 and batches[1] == []  # all cached


def _torchrun(args: list[str], port: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port),
           "-m", "tracenas", "search", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)


def _flags(settings: dict) -> list[str]:
    return [x for k, v in settings.items() for x in (f"--{k.replace('_', '-')}", str(v))]


def _files(out):
    return {f: (out / f).read_text() for f in ("arch.json", "history.jsonl", "search/state.json")}


@pytest.mark.parametrize("proxy", ["phi", "kl"])
def test_two_ranks_equal_one_process_and_resume(tiny_model_dir, tmp_path, proxy):
    """2 gloo ranks: the same history, state and arch.json as one process; a 2-rank resume (rank 0 reads the
    run directory and broadcasts it) continues it exactly; rank 1 writes nothing."""
    one = tmp_path / "one"
    run_search(SearchConfig(model=str(tiny_model_dir), out=str(one), proxy=proxy, **TINY), progress=False)
    two = tmp_path / "two"
    settings = {**TINY, "proxy": proxy, "iterations": 2, "threads": 1}
    proc = _torchrun(["--model", str(tiny_model_dir), "--out", str(two), *_flags(settings)], 29531)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((two / "search/state.json").read_text())["generation"] == 2
    assert json.loads((two / "search/summary.json").read_text())["ranks"] == 2
    proc = _torchrun(["--out", str(two), "--resume", "--iterations", "3"], 29532)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _files(two) == _files(one)
    assert sorted(p.name for p in two.rglob("*")) == sorted(p.name for p in one.rglob("*"))


def test_rank_device_gives_cuda_an_index(monkeypatch):
    """A bare `cuda` becomes an indexed device before `torch.cuda.set_device` (which refuses `cuda` on recent torch:
    every GPU search failed on the lent H200 before this)."""
    import torch

    from tracenas.runtime.distributed import Dist, rank_device

    seen = []

    def set_device(device):
        if isinstance(device, torch.device) and device.index is None:
            raise ValueError("Expected a torch.device with a specified index or an integer, but got:cuda")
        seen.append(device)

    monkeypatch.setattr(torch.cuda, "set_device", set_device)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert rank_device(torch.device("cuda"), Dist()) == torch.device("cuda", 0)
    assert rank_device(torch.device("cuda"), Dist(1, 2, False, 1)) == torch.device("cuda", 1)
    assert rank_device(torch.device("cuda", 3), Dist()) == torch.device("cuda", 3)
    assert rank_device(torch.device("cpu"), Dist()) == torch.device("cpu") and len(seen) == 3
