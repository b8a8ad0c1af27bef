"""Layer-wise reconstruction and OBS selection on tiny random Llama / Qwen2 models (MHA and GQA)."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import TINY_KINDS, make_tiny

from tracenas.arch import Genome, SearchSpace
from tracenas.runtime.errors import TracenasError
from tracenas.export.checkpoint import export_pruned
from tracenas.models.pruned import load_pruned
from tracenas.prune.masking import compute_importance, head_rows, masked, select
from tracenas.models import get_adapter
from tracenas.prune.reconstruct import (
    Gram, apply_reconstruction_, capture_block_inputs, consumer_input, kept_by_order, obs_channel_order, obs_heads,
    obs_order, output_error,
    reconstruct, run_block, solve,
)


def calib(n: int = 24, seq: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 128, (n, seq), generator=torch.Generator().manual_seed(seed))


def setup(kind: str):
    model = make_tiny(kind)
    adapter = get_adapter(model)
    space = SearchSpace(adapter.shape())
    return model, adapter, space, compute_importance(model, adapter, calib())


def pruned_genome(space: SearchSpace) -> Genome:
    n = space.shape.num_layers
    return space.snap(Genome((True, False) + (True,) * (n - 2), (0.5,) * n, (0.4,) * n))


@pytest.mark.parametrize("kind", TINY_KINDS)
@pytest.mark.parametrize("inputs", ["dense", "sequential"])
def test_full_selection_returns_original_weights(kind, inputs):
    model, adapter, space, imp = setup(kind)
    sel = select(space, Genome.full(space.shape.num_layers), imp)
    rec = reconstruct(model, adapter, sel, calib(8), inputs=inputs)
    for i, layer in enumerate(adapter.layers()):
        assert torch.allclose(rec.weights[i]["o_proj"], adapter.attn_proj(layer, "o_proj").weight, atol=1e-6)
        assert torch.allclose(rec.weights[i]["down_proj"], adapter.mlp_proj(layer, "down_proj").weight, atol=1e-6)


def test_solve_matches_direct_least_squares():
    """The closed form equals a ridge least-squares solve on the raw tokens (toward the original weights)."""
    gen = torch.Generator().manual_seed(0)
    x_dense = torch.randn(400, 12, generator=gen, dtype=torch.float64)
    x = x_dense + 0.3 * torch.randn(400, 12, generator=gen, dtype=torch.float64)  # pruned-model inputs
    w = torch.randn(5, 12, generator=gen, dtype=torch.float64)
    kept = torch.tensor([0, 2, 3, 7, 8, 11])
    gram = Gram(12, paired=True)
    gram.add(x.float(), x_dense.float())
    h, _, c = gram.means()
    damp = 0.05
    lam = damp * float(torch.diagonal(h).mean())
    got = solve(w, h, c, kept, damp)
    n = x.shape[0]
    # minimise (1/n)‖X_K Vᵀ − X_d Wᵀ‖² + λ‖V − W_K‖²  <=>  lstsq on the stacked system
    a = torch.cat([x.float().double()[:, kept] / n**0.5, lam**0.5 * torch.eye(len(kept), dtype=torch.float64)])
    b = torch.cat([(x_dense.float().double() @ w.T) / n**0.5, lam**0.5 * w[:, kept].T])
    want = torch.linalg.lstsq(a, b).solution.T
    assert torch.allclose(got, want, atol=1e-8)


@pytest.mark.parametrize("kind", TINY_KINDS)
def test_block_error_drops_on_held_out_tokens(kind):
    """Dense inputs: on tokens not used for calibration, each re-solved sub-block's output (o_proj after the
    kept heads, down_proj after the kept channels) is closer to the dense one than with the mask alone."""
    model, adapter, space, imp = setup(kind)
    s = space.shape
    sel = select(space, pruned_genome(space), imp)
    rec = reconstruct(model, adapter, sel, calib(48), inputs="dense")
    held = capture_block_inputs(adapter, calib(8, seed=7), micro_batch=8)
    hidden, kw = held.states[0], held.kwargs[0]
    for i, layer in enumerate(adapter.layers()):
        if sel[i].keep:
            for name, kept in (("o_proj", head_rows(rec.selection[i].heads, s.head_dim)),
                               ("down_proj", torch.tensor(rec.selection[i].channels))):
                w = (adapter.attn_proj if name == "o_proj" else adapter.mlp_proj)(layer, name).weight
                x = consumer_input(adapter, layer, name, hidden, kw).flatten(0, -2)
                dense = x @ w.T
                mask_err = (x[:, kept] @ w[:, kept].T - dense).pow(2).sum()
                rec_err = (x[:, kept] @ rec.weights[i][name].T - dense).pow(2).sum()
                assert rec_err < mask_err, (i, name)
                assert rec.errors[i][name]["reconstructed"] < rec.errors[i][name]["mask"]
        with torch.no_grad():
            hidden = run_block(layer, hidden, kw)


@pytest.mark.parametrize("kind", ["llama-gqa", "qwen2-mha"])
def test_sequential_beats_mask_only_on_the_output(kind):
    model, adapter, space, imp = setup(kind)
    sel = select(space, pruned_genome(space), imp)
    held = calib(8, seed=9)
    with torch.no_grad():
        dense = adapter.final_hidden(held)
        with masked(model, adapter, sel):
            mask_err = (adapter.final_hidden(held) - dense).pow(2).mean()
        errs = {}
        for inputs in ("dense", "sequential"):
            m = copy.deepcopy(model)
            a = adapter.__class__(m)
            rec = reconstruct(model, adapter, sel, calib(48), inputs=inputs)
            apply_reconstruction_(m, a, rec)
            with masked(m, a, rec.selection):
                errs[inputs] = (a.final_hidden(held) - dense).pow(2).mean()
    assert errs["sequential"] < mask_err and errs["dense"] < mask_err


@pytest.mark.parametrize("kind", TINY_KINDS)
def test_export_of_reconstruction_equals_masked_model(kind, tmp_path):
    """Exported reconstructed checkpoint: logits of the masked model with the same weights; numel exact."""
    model, adapter, space, imp = setup(kind)
    n = space.shape.num_layers
    genome = space.snap(Genome((True, False) + (True,) * (n - 2), (0.0, 0.5) + (0.5,) * (n - 2),
                               (0.4, 0.4, 0.0) + (0.4,) * (n - 3)))
    sel = select(space, genome, imp)
    rec = reconstruct(model, adapter, sel, calib(16), inputs="sequential", importance="obs")
    m = copy.deepcopy(model)
    a = adapter.__class__(m)
    apply_reconstruction_(m, a, rec)
    x = calib(2, seed=3)
    with torch.no_grad(), masked(m, a, rec.selection):
        want = m(x).logits
    path = export_pruned(m, None, rec.selection, tmp_path / "out")
    small = load_pruned(path, attn_implementation="eager")
    with torch.no_grad():
        assert torch.allclose(small(x).logits, want, atol=1e-5, rtol=1e-5)
    assert sum(p.numel() for p in small.parameters()) == space.params(genome)


@pytest.mark.parametrize("kind", ["llama-gqa", "qwen2-mha"])
def test_obs_selection_respects_the_grid(kind):
    model, adapter, space, imp = setup(kind)
    s = space.shape
    sel = select(space, pruned_genome(space), imp)
    rec = reconstruct(model, adapter, sel, calib(16), inputs="dense", importance="obs")
    for old, new in zip(sel, rec.selection):
        assert (len(old.heads), len(old.kv_heads), len(old.channels)) == (len(new.heads), len(new.kv_heads),
                                                                           len(new.channels))
        if s.is_gqa and new.keep:
            per_group = [sum(h // s.group_size == g for h in new.heads) for g in range(s.num_kv_heads)]
            assert len(set(per_group)) == 1
        if not s.is_gqa and new.keep:
            assert new.kv_heads == new.heads


def test_obs_greedy_picks_the_cheapest_removal():
    """With an identity Hessian the OBS error is the column norm: the smallest-norm unit goes first."""
    w = torch.tensor([[3.0, 0.1, 2.0, 1.0], [1.0, 0.1, 2.0, 0.5]])
    h = torch.eye(4, dtype=torch.float64)
    assert obs_channel_order(w, h, damp=1e-9) == [1, 3, 2, 0]
    assert kept_by_order([1, 3, 2, 0], 4, 2) == (0, 2)


def test_obs_heads_keep_groups_equal():
    model, adapter, space, _ = setup("llama-gqa")  # 6 heads, 2 KV groups of 3
    s = space.shape
    w = adapter.attn_proj(adapter.layers()[0], "o_proj").weight
    h = torch.eye(s.num_heads * s.head_dim, dtype=torch.float64)
    for keep in (2, 4, 6):
        kept = obs_heads(w, h, s, keep, damp=0.01)
        assert len(kept) == keep
        assert sum(k < 3 for k in kept) == keep // 2


def test_output_error_is_zero_with_nothing_pruned():
    gram = Gram(6, paired=False)
    gram.add(torch.randn(50, 6))
    w = torch.randn(3, 6)
    assert abs(output_error(w, gram.means(), torch.arange(6))) < 1e-6


@pytest.mark.parametrize("bad", [{"inputs": "upstream"}, {"importance": "magnitude"}, {"damp": 0.0}])
def test_bad_arguments(bad):
    model, adapter, space, imp = setup("llama-gqa")
    sel = select(space, Genome.full(space.shape.num_layers), imp)
    with pytest.raises(TracenasError):
        reconstruct(model, adapter, sel, calib(2), **bad)


def test_obs_first_removal_is_the_brute_force_best():
    """The greedy step removes the unit whose removal, after the optimal re-solve of the rest, costs least."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(300, 12, generator=gen) @ torch.randn(12, 12, generator=gen)
    gram = Gram(12, paired=False)
    gram.add(x)
    grams = gram.means()
    w = torch.randn(4, 12, generator=gen)
    units = [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]
    costs = []
    for u in units:
        kept = torch.tensor([c for c in range(12) if c not in u])
        costs.append(output_error(w, grams, kept, solve(w, grams[0], grams[2], kept, 1e-9)))
    assert obs_order(w, grams[0], units, 1e-9, stop=3)[0] == min(range(4), key=costs.__getitem__)


def test_export_cli_reconstructs(tmp_path, capsys):
    """`tracenas export RUN --reconstruct sequential --importance obs`: reconstruction.json, card row, exact count."""
    import json

    from test_export import make_run_dir

    from tracenas.cli import main

    run_dir, _, _ = make_run_dir(tmp_path)
    assert main(["export", str(run_dir), "--reconstruct", "sequential", "--importance", "obs",
                 "--calib-sequences", "4", "--calib-seq-len", "32"]) == 0
    model_dir = run_dir / "model"
    record = json.loads((model_dir / "reconstruction.json").read_text())
    assert record["settings"]["inputs"] == "sequential" and record["calibration_tokens"] == 128
    assert record["mean"]["down_proj_reconstructed"] < record["mean"]["down_proj_mask"]
    assert "| weight reconstruction | sequential inputs, obs selection" in (model_dir / "README.md").read_text()
    arch = json.loads((run_dir / "arch.json").read_text())
    small = load_pruned(model_dir)
    assert sum(p.numel() for p in small.parameters()) == arch["params"]
    # exporting again over it is allowed (reconstruction.json is one of an export's own files)
    assert main(["export", str(run_dir), "--reconstruct", "dense", "--calib-sequences", "2", "--calib-seq-len", "16"]) == 0
    assert json.loads((model_dir / "reconstruction.json").read_text())["settings"]["inputs"] == "dense"


def test_obs_without_reconstruct_is_refused(tmp_path, capsys):
    from test_export import make_run_dir

    from tracenas.cli import main

    run_dir, _, _ = make_run_dir(tmp_path)
    assert main(["export", str(run_dir), "--importance", "obs"]) != 0
    assert "needs --reconstruct dense or sequential" in capsys.readouterr().err


def test_obs_chunks_remove_the_cheapest_together():
    w = torch.tensor([[3.0, 0.1, 2.0, 1.0], [1.0, 0.1, 2.0, 0.5]])
    h = torch.eye(4, dtype=torch.float64)
    assert obs_channel_order(w, h, damp=1e-9, chunk=2) == [1, 3, 0, 2]
    assert obs_channel_order(w, h, damp=1e-9, stop=2, chunk=2) == [1, 3]
