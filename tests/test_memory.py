"""Activation checkpointing of the blocks changes no trace and keeps less for backward (tracenas.prune.memory)."""

import torch

from tracenas.arch import Genome, SearchSpace
from tracenas.prune.masking import compute_importance
from tracenas.prune.memory import checkpoint_blocks, saved_bytes
from tracenas.models import get_adapter
from tracenas.proxies.traces import Scorer, TraceProbes, causal_lm_loss

from conftest import make_tiny


def test_checkpointed_blocks_give_the_same_traces_and_save_less(tiny_batches):
    model = make_tiny("qwen2-gqa")
    adapter = get_adapter(model)
    probes = TraceProbes(model, adapter, rank=8)
    ref, ref_loss = probes.trace(tiny_batches, micro_batch=2)
    for p in model.parameters():
        p.requires_grad_(False)
    for b in probes.B.values():
        b.requires_grad_(True)
    before = saved_bytes(lambda: causal_lm_loss(adapter, tiny_batches), exclude=model.parameters())
    checkpoint_blocks(adapter)
    checkpoint_blocks(adapter)  # idempotent
    after = saved_bytes(lambda: causal_lm_loss(adapter, tiny_batches), exclude=model.parameters())
    got, loss = probes.trace(tiny_batches, micro_batch=2)
    assert after < before / 2
    assert abs(loss - ref_loss) < 1e-6
    for key in ref:
        assert torch.allclose(got[key], ref[key], atol=1e-6, rtol=1e-4), key
    with torch.no_grad():  # forward-only: blocks run as before
        assert torch.isfinite(adapter.final_hidden(tiny_batches)).all()


def test_checkpointed_blocks_score_sliced_candidates_like_plain_ones(tiny_batches):
    scores = []
    for checkpointed in (False, True):
        model = make_tiny("llama-mha")
        adapter = get_adapter(model)
        if checkpointed:
            checkpoint_blocks(adapter)
        space = SearchSpace(adapter.shape(), min_layers=1)
        imp = compute_importance(model, adapter, tiny_batches)
        probes = TraceProbes(model, adapter, rank=8)
        base, _ = probes.trace(tiny_batches, micro_batch=2)
        n = space.shape.num_layers
        genome = Genome(tuple(i != 2 for i in range(n)), (space.snap_attn(0.5),) * n, (space.snap_mlp(0.4),) * n)
        scores.append(Scorer(model, adapter, space, imp, tiny_batches, "phi", probes, base, micro_batch=2).score(genome)[0])
    assert abs(scores[0] - scores[1]) < 1e-5


def test_scorer_halves_the_micro_batch_after_out_of_memory(tiny_batches, monkeypatch):
    """An out-of-memory error lowers the micro-batch and scores the candidate again (kept for later ones)."""
    model = make_tiny("llama-gqa")
    adapter = get_adapter(model)
    space = SearchSpace(adapter.shape(), min_layers=1)
    imp = compute_importance(model, adapter, tiny_batches)
    scorer = Scorer(model, adapter, space, imp, tiny_batches, "kl", micro_batch=4)
    expected = scorer.score(Genome.full(space.shape.num_layers))[0]
    original, seen = type(scorer.method).measure, []

    def measure(self, sc, genome):  # a device that holds one sequence at a time
        seen.append(sc.micro_batch)
        if sc.micro_batch > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(self, sc, genome)

    monkeypatch.setattr(type(scorer.method), "measure", measure)
    value, _ = scorer.score(Genome.full(space.shape.num_layers))
    assert seen == [4, 2, 1] and scorer.micro_batch == 1
    assert abs(value - expected) < 1e-6
