import json
import random

import pytest
import torch

from tracenas.arch import Genome, SearchSpace
from tracenas.masking import compute_importance, masked, select, slice_model
from tracenas.models import get_adapter


def random_genome(space: SearchSpace, rng: random.Random, drop: bool = True) -> Genome:
    n = space.shape.num_layers
    keep = [True] * n
    if drop:
        for i in rng.sample(range(n), k=rng.randint(1, n - space.min_layers)):
            keep[i] = False
    return space.snap(Genome(tuple(keep), tuple(rng.uniform(0.05, 1) for _ in range(n)),
                             tuple(rng.uniform(0.05, 1) for _ in range(n))))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_masked_logits_equal_sliced_logits(tiny_model, tiny_batches, seed):
    check_masked_equals_sliced(tiny_model, tiny_batches, seed)


@pytest.mark.parametrize("kind", ["qwen3-gqa", "qwen3-mha", "mistral-gqa"])
def test_other_families_mask_and_slice_exactly(kind, tiny_batches):
    """A family added as one adapter file (Qwen3: q/k norms per head_dim) is exact, counted and sliced."""
    from conftest import make_tiny

    model = make_tiny(kind)
    assert SearchSpace(get_adapter(model).shape()).base_params() == sum(p.numel() for p in model.parameters())
    for seed in (0, 1):
        check_masked_equals_sliced(model, tiny_batches, seed)


def check_masked_equals_sliced(tiny_model, tiny_batches, seed):
    adapter = get_adapter(tiny_model)
    space = SearchSpace(adapter.shape(), min_layers=1)
    imp = compute_importance(tiny_model, adapter, tiny_batches)
    genome = random_genome(space, random.Random(seed))
    sel = select(space, genome, imp)
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    with torch.no_grad():
        base = tiny_model(tiny_batches).logits
        with masked(tiny_model, adapter, sel):
            masked_logits = tiny_model(tiny_batches).logits
        small = slice_model(tiny_model, adapter, sel)
        sliced_logits = small(tiny_batches).logits
        after = tiny_model(tiny_batches).logits
    assert torch.allclose(masked_logits, sliced_logits, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(masked_logits, base, atol=1e-3)
    assert torch.equal(after, base)
    for k, v in tiny_model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert space.params(genome) == sum(p.numel() for p in small.parameters())
    assert small.config.num_hidden_layers == sum(genome.keep)


def test_full_genome_params_equal_model_numel(tiny_model):
    space = SearchSpace(get_adapter(tiny_model).shape())
    assert space.base_params() == sum(p.numel() for p in tiny_model.parameters())


def test_gqa_keeps_equal_heads_per_group(tiny_batches):
    from conftest import make_tiny

    model = make_tiny("llama-gqa")
    adapter = get_adapter(model)
    space = SearchSpace(adapter.shape())
    imp = compute_importance(model, adapter, tiny_batches)
    genome = space.snap(Genome((True,) * 4, (0.34,) * 4, (0.5,) * 4))
    for sel in select(space, genome, imp):
        groups = [h // space.shape.group_size for h in sel.heads]
        assert sorted(groups) == [0, 1]  # 1 head in each of the 2 groups
        assert sel.kv_heads == (0, 1)


def test_genome_json_round_trip(tiny_model):
    space = SearchSpace(get_adapter(tiny_model).shape())
    g = random_genome(space, random.Random(5))
    assert Genome.from_dict(json.loads(json.dumps(g.to_dict()))) == g
    assert Genome.from_dict(json.loads(json.dumps(g.to_dict()))).key() == g.key()
