"""Scoring a candidate on its physically sliced blocks gives what scoring it under masks gives (tracenas.prune.sliced)."""

import pytest
import torch

from tracenas.arch import Genome, SearchSpace
from tracenas.prune.masking import compute_importance, kept_indices, masked, select
from tracenas.models import get_adapter
from tracenas.proxies.traces import Scorer, TraceProbes, causal_lm_loss
from tracenas.prune.sliced import sliced

from conftest import make_tiny


def _candidate(space: SearchSpace, n: int) -> Genome:
    keep = tuple(i != 1 for i in range(n))  # one dropped block
    attn = tuple(space.snap_attn(r) for r in (0.5, 1.0, 0.34, 0.67)[:n])
    mlp = tuple(space.snap_mlp(r) for r in (0.34, 0.5, 1.0, 0.67)[:n])
    return Genome(keep, attn, mlp)


@pytest.fixture
def setup(tiny_model, tiny_batches):
    adapter = get_adapter(tiny_model)
    space = SearchSpace(adapter.shape(), min_layers=1)
    imp = compute_importance(tiny_model, adapter, tiny_batches)
    return tiny_model, adapter, space, imp, tiny_batches


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_sliced_blocks_hold_only_the_kept_weights_and_restore_exactly(setup):
    model, adapter, space, imp, batches = setup
    n = space.shape.num_layers
    genome = _candidate(space, n)
    sel = select(space, genome, imp)
    before = _weights(model)
    with torch.no_grad():
        with masked(model, adapter, sel):
            ref = model(batches).logits
        with sliced(model, adapter, sel) as view:
            got = model(batches).logits
            kept_params = sum(p.numel() for p in model.parameters())
            for (i, name), lin in view.modules.items():
                rows, cols = kept_indices(space.shape, sel[i])[name]
                assert lin.out_features == (len(rows) if rows is not None else lin.out_features)
                assert lin.in_features == (len(cols) if cols is not None else lin.in_features)
        after = model(batches).logits
    # the sliced model's own parameters (kept blocks sliced, the dropped block's still registered) are fewer
    assert kept_params < sum(p.numel() for p in model.parameters())
    assert torch.allclose(ref, got, atol=1e-5, rtol=1e-4)
    now = _weights(model)
    assert all(torch.equal(before[k], now[k]) for k in before)
    assert [type(m).__name__ for m in adapter.layers()] == [type(m).__name__ for m in get_adapter(model).layers()]
    with torch.no_grad():
        assert torch.equal(after, model(batches).logits)
    shape = adapter.shape()  # sizes read off the live modules are the dense ones again
    assert (shape.num_heads, shape.intermediate_size) == (space.shape.num_heads, space.shape.intermediate_size)


def test_sliced_is_restored_after_an_error(setup):
    model, adapter, space, imp, batches = setup
    sel = select(space, _candidate(space, space.shape.num_layers), imp)
    with torch.no_grad():
        ref = model(batches).logits
        with pytest.raises(RuntimeError, match="boom"):
            with sliced(model, adapter, sel):
                raise RuntimeError("boom")
        assert torch.equal(ref, model(batches).logits)


@pytest.mark.parametrize("proxy", ["phi", "pearson", "gradnorm", "kl", "ppl", "naswot"])
def test_sliced_scores_equal_masked_scores(setup, proxy):
    """Traces (pruned coordinates exactly zero, as under masks), Φ and the forward proxies agree."""
    model, adapter, space, imp, batches = setup
    probes = TraceProbes(model, adapter, rank=8, seed=0)
    base, _ = probes.trace(batches, micro_batch=2)
    n = space.shape.num_layers
    scorers = {on: Scorer(model, adapter, space, imp, batches, proxy, probes, base, micro_batch=2, score_on=on)
               for on in ("masked", "sliced")}
    for genome in (_candidate(space, n), Genome.full(n),
                   Genome((True,) * n, (space.snap_attn(0.3),) * n, (space.snap_mlp(0.6),) * n)):
        m, _ = scorers["masked"].score(genome)
        s, info = scorers["sliced"].score(genome)
        assert s == pytest.approx(m, rel=1e-5, abs=1e-6), (proxy, genome)
    probes.remove()


def test_sliced_traces_equal_masked_traces_coordinate_by_coordinate(setup):
    model, adapter, space, imp, batches = setup
    shape = space.shape
    probes = TraceProbes(model, adapter, rank=8, seed=0)
    genome = _candidate(space, shape.num_layers)
    sel = select(space, genome, imp)
    active = {i for i, k in enumerate(genome.keep) if k}
    with masked(model, adapter, sel):
        probes.set_selection(sel, shape.head_dim, shape.num_heads)
        ref, ref_loss = probes.trace(batches, 2, 1024, active)
        probes.set_selection(None, shape.head_dim, shape.num_heads)
    with sliced(model, adapter, sel) as view, probes.attached(view):
        got, loss = probes.trace(batches, 2, 1024, active)
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    assert ref.keys() == got.keys()
    for key in ref:
        assert got[key].shape == ref[key].shape
        assert torch.allclose(got[key], ref[key], atol=1e-6, rtol=1e-4), key
        rows, _ = kept_indices(shape, sel[key[0]])[key[1]]
        if rows is not None:  # pruned rows: exactly zero in both
            gone = torch.ones(got[key].shape[0], dtype=torch.bool)
            gone[rows] = False
            assert torch.count_nonzero(got[key][gone]) == 0
            assert torch.count_nonzero(ref[key][gone]) == 0
    probes.remove()


def test_the_sliced_pass_costs_what_the_candidate_keeps(tiny_batches):
    """Counted FLOPs of a kept-40 % candidate's loss are well below the dense model's (masks cost the dense ones)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = make_tiny("llama-gqa")
    adapter = get_adapter(model)
    space = SearchSpace(adapter.shape(), min_layers=1)
    imp = compute_importance(model, adapter, tiny_batches)
    n = space.shape.num_layers
    genome = Genome((True,) * n, (space.snap_attn(0.34),) * n, (space.snap_mlp(0.34),) * n)
    sel = select(space, genome, imp)

    def flops(ctx) -> int:
        with ctx, torch.no_grad(), FlopCounterMode(display=False) as counter:
            causal_lm_loss(adapter, tiny_batches)
        return counter.get_total_flops()

    dense, under_masks, on_slices = flops(torch.enable_grad()), flops(masked(model, adapter, sel)), flops(
        sliced(model, adapter, sel))
    assert under_masks == dense
    assert on_slices < 0.75 * dense


@pytest.mark.parametrize("kind", ["qwen3-gqa", "mistral-gqa"])
def test_other_families_score_the_same_sliced(kind, tiny_batches):
    model = make_tiny(kind)
    adapter = get_adapter(model)
    space = SearchSpace(adapter.shape(), min_layers=1)
    imp = compute_importance(model, adapter, tiny_batches)
    probes = TraceProbes(model, adapter, rank=8)
    base, _ = probes.trace(tiny_batches, micro_batch=2)
    genome = _candidate(space, space.shape.num_layers)
    for proxy in ("phi", "kl"):
        m, s = (Scorer(model, adapter, space, imp, tiny_batches, proxy, probes, base, micro_batch=2, score_on=on)
                .score(genome)[0] for on in ("masked", "sliced"))
        assert s == pytest.approx(m, rel=1e-5, abs=1e-6), (kind, proxy)


def test_compiled_blocks_score_sliced_candidates_like_eager_ones(tiny_batches):
    """`compile_blocks` (dynamo, eager backend: no code generation) scores sliced candidates as eager blocks do."""
    import torch._dynamo

    from tracenas.prune.sliced import compile_blocks

    scores = []
    try:
        for compiled in (False, True):
            model = make_tiny("llama-gqa", num_layers=2)
            adapter = get_adapter(model)
            space = SearchSpace(adapter.shape(), min_layers=1)
            imp = compute_importance(model, adapter, tiny_batches)
            if compiled:
                compile_blocks(adapter, backend="eager")
            probes = TraceProbes(model, adapter, rank=8)
            base, _ = probes.trace(tiny_batches, micro_batch=2)
            scorer = Scorer(model, adapter, space, imp, tiny_batches, "phi", probes, base, micro_batch=2)
            scores.append([scorer.score(Genome((True, True), (space.snap_attn(a),) * 2, (space.snap_mlp(m),) * 2))[0]
                           for a, m in ((0.34, 0.34), (0.67, 0.5), (1.0, 0.67))])
    finally:
        torch._dynamo.reset()
    assert scores[1] == pytest.approx(scores[0], rel=1e-5, abs=1e-6)
