import math

import pytest
import torch

from tracenas.arch import Genome, SearchSpace
from tracenas.prune.masking import compute_importance
from tracenas.models import get_adapter
from tracenas.proxies.traces import Scorer, TraceProbes, causal_lm_loss, pearson
from tracenas.proxies.registry import proxy_names


@pytest.fixture
def setup(tiny_model, tiny_batches):
    adapter = get_adapter(tiny_model)
    space = SearchSpace(adapter.shape(), min_layers=1)
    imp = compute_importance(tiny_model, adapter, tiny_batches)
    probes = TraceProbes(tiny_model, adapter, rank=8, seed=0)
    base, _ = probes.trace(tiny_batches, micro_batch=2)
    return tiny_model, adapter, space, imp, probes, base, tiny_batches


def test_probes_leave_outputs_unchanged(tiny_model, tiny_batches):
    adapter = get_adapter(tiny_model)
    with torch.no_grad():
        before = tiny_model(tiny_batches).logits
        probes = TraceProbes(tiny_model, adapter, rank=8)
        during = tiny_model(tiny_batches).logits
        probes.remove()
        after = tiny_model(tiny_batches).logits
    assert torch.equal(before, during) and torch.equal(before, after)


def test_chunked_loss_equals_full_loss(tiny_model, tiny_batches):
    adapter = get_adapter(tiny_model)
    with torch.no_grad():
        full = tiny_model(tiny_batches, labels=tiny_batches).loss
        for chunk in (1, 7, 1024):
            assert torch.allclose(causal_lm_loss(adapter, tiny_batches, chunk=chunk), full, atol=1e-5)


def test_traces_are_b_gradients_equal_projected_weight_gradient(tiny_model, tiny_batches):
    """dL/dB = (dL/dW) Aᵀ: the trace is the full weight gradient projected on A."""
    adapter = get_adapter(tiny_model)
    probes = TraceProbes(tiny_model, adapter, rank=8)
    traces, _ = probes.trace(tiny_batches, micro_batch=4)
    probes.remove()
    lin = adapter.projections(adapter.layers()[1])["up_proj"]
    tiny_model.zero_grad()
    for p in tiny_model.parameters():
        p.requires_grad_(False)
    lin.weight.requires_grad_(True)
    causal_lm_loss(adapter, tiny_batches).backward()
    expected = lin.weight.grad @ probes.A[(1, "up_proj")].T
    assert torch.allclose(traces[(1, "up_proj")], expected, atol=1e-6, rtol=1e-4)


def test_phi_of_unpruned_genome_counts_active_sub_blocks(setup):
    model, adapter, space, imp, probes, base, batches = setup
    scorer = Scorer(model, adapter, space, imp, batches, "phi", probes, base, micro_batch=2)
    n = space.shape.num_layers
    assert scorer.score(Genome.full(n))[0] == pytest.approx(2 * n, abs=1e-6)
    keep = (True,) * (n - 1) + (False,)
    assert scorer.score(Genome(keep, (1.0,) * n, (1.0,) * n))[0] < 2 * (n - 1) + 1e-9


def test_phi_drops_when_a_sub_block_is_pruned(setup):
    model, adapter, space, imp, probes, base, batches = setup
    scorer = Scorer(model, adapter, space, imp, batches, "phi", probes, base, micro_batch=2)
    n = space.shape.num_layers
    full = scorer.score(Genome.full(n))[0]
    mlp = list((1.0,) * n)
    mlp[1] = space.snap_mlp(0.3)
    pruned_mlp = scorer.score(Genome((True,) * n, (1.0,) * n, tuple(mlp)))[0]
    attn = list((1.0,) * n)
    attn[2] = space.snap_attn(0.4)
    pruned_attn = scorer.score(Genome((True,) * n, tuple(attn), (1.0,) * n))[0]
    assert pruned_mlp < full - 1e-3
    assert pruned_attn < full - 1e-3
    # weights are restored after scoring
    assert scorer.score(Genome.full(n))[0] == pytest.approx(full)


# Proxies whose maximum is the unpruned model by construction: trace similarities are 1 (and their weights
# are 1) only for the base model's own traces, #params is monotone, and KL to the base model is 0 only for it.
FULL_MODEL_IS_BEST = ("phi", "pearson", "cosine", "params", "kl")


@pytest.mark.parametrize("proxy", proxy_names())
def test_every_proxy_reacts_to_pruning_and_the_bounded_ones_rank_the_full_model_first(setup, proxy):
    model, adapter, space, imp, probes, base, batches = setup
    scorer = Scorer(model, adapter, space, imp, batches, proxy, probes, base, micro_batch=2)
    n = space.shape.num_layers
    small = space.snap(Genome((True, False) * (n // 2), (0.2,) * n, (0.2,) * n))
    s_full, s_small = scorer.score(Genome.full(n))[0], scorer.score(small)[0]
    assert math.isfinite(s_full) and math.isfinite(s_small)
    assert s_full != s_small  # the candidate's masks (or size) reached the score
    if proxy in FULL_MODEL_IS_BEST:
        assert s_full > s_small


def test_non_finite_loss_scores_minus_inf_with_warning(setup, caplog):
    model, adapter, space, imp, probes, base, batches = setup
    scorer = Scorer(model, adapter, space, imp, batches, "phi", probes, base, micro_batch=2)
    with torch.no_grad():
        w = adapter.decoder().norm.weight
        saved = w.clone()
        w.fill_(float("nan"))
    try:
        score, _ = scorer.score(Genome.full(space.shape.num_layers))
    finally:
        with torch.no_grad():
            w.copy_(saved)
    assert score == float("-inf")
    assert "non-finite" in caplog.text


def test_pearson_known_values():
    a = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    assert pearson(a, 2 * a + 1) == pytest.approx(1.0)
    assert pearson(a, -a) == pytest.approx(-1.0)
    assert pearson(a, torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64)) == pytest.approx(0.0)
