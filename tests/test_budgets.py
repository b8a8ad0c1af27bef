"""Budgets in serving memory and FLOPs per token: exact against the sliced model, and searched into the window."""

from __future__ import annotations

import json
import random

import pytest
import torch
from conftest import make_tiny, save_tiny

from tracenas.arch import Genome, SearchSpace
from tracenas.budget import BudgetMetric
from tracenas.cli import main
from tracenas.runtime.config import normalize_memory_budget
from tracenas.runtime.errors import BudgetError
from tracenas.prune.masking import compute_importance, select, slice_model
from tracenas.models import get_adapter


def sliced(kind: str, seed: int, metric: BudgetMetric):
    model = make_tiny(kind)
    adapter = get_adapter(model)
    space = SearchSpace(adapter.shape(), min_layers=2, metric=metric)
    rng = random.Random(seed)
    n = space.shape.num_layers
    genome = space.snap(Genome(tuple(i != seed % n for i in range(n)), tuple(rng.uniform(0.1, 1) for _ in range(n)),
                               tuple(rng.uniform(0.1, 1) for _ in range(n))))
    batches = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(seed))
    small = slice_model(model, adapter, select(space, genome, compute_importance(model, adapter, batches)))
    small.config._attn_implementation = "eager"  # plain matmuls, which the FLOP counter sees
    return space, genome, small.eval()


@pytest.mark.parametrize("kind", ["llama-gqa", "qwen2-mha"])
@pytest.mark.parametrize("seed", [0, 1])
def test_memory_is_weights_plus_kv_cache_of_the_sliced_model(kind, seed):
    metric = BudgetMetric("memory", dtype_bytes=2, context=24, batch=3)
    space, genome, small = sliced(kind, seed, metric)
    small = small.to(torch.bfloat16)
    weights = sum(p.numel() * p.element_size() for p in small.parameters())
    ids = torch.randint(0, 128, (metric.batch, metric.context))
    with torch.no_grad():
        cache = small(ids, use_cache=True).past_key_values
    kv = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
    assert space.memory_bytes(genome) == weights + kv


@pytest.mark.parametrize("kind", ["llama-gqa", "qwen2-mha"])
@pytest.mark.parametrize("seed", [0, 1])
def test_flops_per_token_equal_torch_flop_counter_on_a_decode_step(kind, seed):
    from torch.utils.flop_counter import FlopCounterMode

    metric = BudgetMetric("flops", context=20)
    space, genome, small = sliced(kind, seed, metric)
    with torch.no_grad():
        cache = small(torch.randint(0, 128, (1, metric.context - 1)), use_cache=True).past_key_values
        counter = FlopCounterMode(display=False)
        with counter:  # the token at position `context`
            small(torch.randint(0, 128, (1, 1)), past_key_values=cache, use_cache=True)
    assert space.flops_per_token(genome) == counter.get_total_flops()


def test_memory_sizes():
    assert normalize_memory_budget("300MB") == "300000000"
    assert normalize_memory_budget("1GiB") == str(2**30)
    assert normalize_memory_budget("0.6") == "0.6"
    for bad in ("300M", "lots", "0MB", "infGB", "1.5"):
        with pytest.raises(BudgetError):
            normalize_memory_budget(bad)


@pytest.mark.parametrize("flag,budget,key", [("--budget-memory", "0.7", "memory_bytes"),
                                             ("--budget-flops", "0.7", "flops_per_token")])
def test_search_lands_the_chosen_cost_in_the_window_and_reports_it(tmp_path, flag, budget, key):
    model = save_tiny(tmp_path / "model")
    run = tmp_path / "run"
    assert main(["search", "--model", str(model), "--num-sequences", "2", "--seq-len", "32", "--population", "4",
                 "--elites", "2", "--iterations", "2", "--min-layers", "2", "--budget-tolerance", "0.25",
                 "--budget-context", "64", flag, budget, "--out", str(run)]) == 0
    arch = json.loads((run / "arch.json").read_text())
    assert arch["budget_metric"]["kind"] == key.split("_")[0]
    assert 0.75 * arch["budget"] <= arch[key] <= arch["budget"]
    assert main(["export", str(run)]) == 0
    card = (run / "model" / "README.md").read_text()
    assert f"{arch[key]:,}" in card or str(arch[key]) in card


def test_memory_and_flops_together_are_refused(capsys):
    assert main(["search", "--budget-memory", "100MB", "--budget-flops", "1M"]) == 2
    assert "not both" in capsys.readouterr().err


def untied_copy(tmp_path, noise: float):
    """A tiny Llama whose output head is the embeddings plus `noise` (relative), stored apart."""
    from conftest import make_tiny_tokenizer

    model = make_tiny("llama-gqa")
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        model.get_output_embeddings().weight.copy_(emb + noise * emb.std() * torch.randn_like(emb))
    path = tmp_path / f"untied-{noise}"
    model.save_pretrained(path)
    make_tiny_tokenizer().save_pretrained(path)
    return path, emb.numel()


def test_tie_embeddings_when_the_head_equals_them_up_to_noise(tmp_path, caplog, capsys):
    from tracenas.models.loading import load_model
    from tracenas.models.pruned import load_pruned

    path, extra = untied_copy(tmp_path, 0.02)
    model, _, _ = load_model(str(path), with_tokenizer=False)
    untied = sum(p.numel() for p in model.parameters())
    assert "--tie-embeddings" in caplog.text  # offered, not done
    tied, _, _ = load_model(str(path), with_tokenizer=False, tie_embeddings=True)
    assert sum(p.numel() for p in tied.parameters()) == untied - extra
    run = tmp_path / "run"
    assert main(["search", "--model", str(path), "--tie-embeddings", "--num-sequences", "2", "--seq-len", "32",
                 "--population", "4", "--elites", "2", "--iterations", "1", "--min-layers", "2", "--budget", "0.7",
                 "--budget-tolerance", "0.25", "--out", str(run)]) == 0
    arch = json.loads((run / "arch.json").read_text())
    assert arch["base_params"] == untied - extra and arch["model"]["tie_embeddings"] is True
    assert main(["export", str(run)]) == 0
    exported = load_pruned(run / "model")
    assert sum(p.numel() for p in exported.parameters()) == arch["params"]
    assert exported.get_output_embeddings().weight is exported.get_input_embeddings().weight
    distinct, _ = untied_copy(tmp_path, 1.0)  # a genuinely separate head is refused, in one line
    capsys.readouterr()
    assert main(["search", "--model", str(distinct), "--tie-embeddings", "--out", str(tmp_path / "no")]) == 2
    assert "differs from the input embeddings" in capsys.readouterr().err
