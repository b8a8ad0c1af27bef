"""`--strategy depth`: Block Influence (ShortGPT) and the depth-only genome."""

from __future__ import annotations

import json

import torch
from conftest import make_tiny

from tracenas.arch import SearchSpace
from tracenas.models import get_adapter
from tracenas.search.config import SearchConfig
from tracenas.search.strategies.depth import DepthSearch
from tracenas.search.recipes.depth import block_influence
from tracenas.search.recipes.runner import run_search


def test_block_influence_is_one_minus_the_mean_cosine_of_block_input_and_output():
    model = make_tiny("llama-gqa", num_layers=3)
    adapter = get_adapter(model)
    ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    bi = block_influence(adapter, ids, micro_batch=1)
    with torch.no_grad():
        hidden = model(ids, output_hidden_states=True).hidden_states
    # hidden_states[l] enters block l; the last entry is after the final norm, so block l's output is
    # hidden_states[l + 1] except for the last block
    for layer in range(2):
        cos = torch.nn.functional.cosine_similarity(hidden[layer], hidden[layer + 1], dim=-1).mean()
        assert abs(bi[layer] - (1 - float(cos))) < 1e-5
    assert len(bi) == 3 and all(0 <= x <= 2 for x in bi)


def test_depth_genome_drops_the_least_influential_blocks_until_the_budget():
    space = SearchSpace(get_adapter(make_tiny("llama-gqa", num_layers=6)).shape(), min_layers=1)
    budget = space.resolve_budget("0.7")
    search = DepthSearch(DepthSearch.config_from(SearchConfig(strategy="depth").resolved()), space, budget,
                         lambda g: (0.0, {}))
    search.influence = [0.5, 0.1, 0.9, 0.05, 0.3, 0.7]
    genome = search.depth_genome()
    dropped = [i for i, k in enumerate(genome.keep) if not k]
    assert space.cost(genome) <= budget and set(dropped) <= {3, 1, 4, 0}
    assert dropped == sorted([3, 1, 4, 0][:len(dropped)])  # lowest influence first
    assert all(a == 1.0 and m == 1.0 for a, m in zip(genome.attn, genome.mlp))
    one_less = list(genome.keep)
    one_less[[3, 1, 4, 0][len(dropped) - 1]] = True  # the last drop was needed
    assert space.cost(genome.__class__(tuple(one_less), genome.attn, genome.mlp)) > budget


def test_depth_search_runs(tiny_model_dir, tmp_path):
    out = tmp_path / "depth"
    res = run_search(SearchConfig(model=str(tiny_model_dir), out=str(out), strategy="depth", num_sequences=2,
                                  seq_len=16, budget="0.8", min_layers=1, threads=1), progress=False)
    arch = json.loads((out / "arch.json").read_text())
    assert arch["strategy"] == "depth" and res.candidates_scored == 1 and arch["params"] <= res.budget
    assert "block influence" in (out / "search.log").read_text()
