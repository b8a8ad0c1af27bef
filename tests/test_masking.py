import json
import random

import pytest
import torch

from tracenas.arch import Genome, SearchSpace
from tracenas.prune.masking import compute_importance, masked, select, slice_model
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


@pytest.mark.parametrize("kind", ["qwen2-mha", "qwen2-gqa"])
def test_every_way_of_pruning_removes_exactly_what_kept_indices_keeps(kind):
    """Masks, reconstruction's in-place pruning and slicing all follow `kept_indices` entry by entry
    (Qwen2 has q/k/v biases, made nonzero; block 1 loses its attention, block 2 its MLP, block 3 nothing)."""
    import copy

    from conftest import make_tiny
    from tracenas.prune.masking import LayerSelection, kept_indices, projection, slice_layer_
    from tracenas.prune.reconstruct import prune_attention_, prune_mlp_

    model = make_tiny(kind)
    adapter = get_adapter(model)
    s = adapter.shape()
    with torch.no_grad():  # initialised to zero: give the biases values, or removing them shows nothing
        for layer in adapter.layers():
            for lin in adapter.projections(layer).values():
                if lin.bias is not None:
                    lin.bias.normal_()
    every_head, every_kv, every_ch = tuple(range(s.num_heads)), tuple(range(s.num_kv_heads)), tuple(range(96))
    heads, kv = ((0, 3), (0, 3)) if not s.is_gqa else ((0, 2, 4), every_kv)
    sels = [LayerSelection(True, heads, kv, (1, 5, 50)), LayerSelection(True, (), (), (7,)),
            LayerSelection(True, heads, kv, ()), LayerSelection(True, every_head, every_kv, every_ch)]
    dense = {(i, n): (lin.weight.detach().clone(), None if lin.bias is None else lin.bias.detach().clone())
             for i, layer in enumerate(adapter.layers()) for n, lin in adapter.projections(layer).items()}

    def expected(i, name, sel):
        w, b = (t.clone() if t is not None else None for t in dense[(i, name)])
        rows, cols = kept_indices(s, sel)[name]
        if rows is not None:
            gone = torch.ones(w.shape[0], dtype=torch.bool)
            gone[rows] = False
            w[gone] = 0
            if b is not None:
                b[gone] = 0
        if cols is not None:
            gone = torch.ones(w.shape[1], dtype=torch.bool)
            gone[cols] = False
            w[:, gone] = 0
            if b is not None and len(cols) == 0:
                b.zero_()
        return w, b

    pruned = copy.deepcopy(model)
    pruned_adapter = get_adapter(pruned)
    for i, sel in enumerate(sels):
        prune_attention_(pruned_adapter, pruned_adapter.layers()[i], s, sel.heads, None)
        prune_mlp_(pruned_adapter, pruned_adapter.layers()[i], s, sel.channels, None)
    with masked(model, adapter, sels):
        for i, sel in enumerate(sels):
            for name in dense:
                if name[0] != i:
                    continue
                w, b = expected(i, name[1], sel)
                for a in (adapter, pruned_adapter):
                    lin = projection(a, a.layers()[i], name[1])
                    assert torch.equal(lin.weight, w), (i, name)
                    assert b is None or torch.equal(lin.bias, b), (i, name)
    for i, sel in enumerate(sels):
        layer = copy.deepcopy(adapter.layers()[i])
        slice_layer_(adapter, layer, sel, s)
        left = adapter.projections(layer)
        assert (set(left) >= {"q_proj", "o_proj"}) == bool(sel.heads)
        assert (set(left) >= {"gate_proj", "down_proj"}) == bool(sel.channels)
        for name, lin in left.items():
            rows, cols = kept_indices(s, sel)[name]
            w, b = dense[(i, name)]
            w = w if rows is None else w[rows]
            w = w if cols is None else w[:, cols]
            assert torch.equal(lin.weight, w), (i, name)
            if b is not None:
                assert torch.equal(lin.bias, b if rows is None else b[rows]), (i, name)
