"""The sparsity-level database: levels, resumable byte-identical builds, stale refusal, assembly of candidates."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_tiny, make_tiny_tokenizer, run_killed

import tracenas.prune.database as database
from tracenas.arch import SearchSpace
from tracenas.cli import main
from tracenas.data import token_batches
from tracenas.runtime.errors import TracenasError
from tracenas.export.checkpoint import export_pruned
from tracenas.models.pruned import load_pruned
from tracenas.prune.masking import masked
from tracenas.models import get_adapter
from tracenas.prune.reconstruct import reconstruct

SEQS, SEQ_LEN = 4, 32


@pytest.fixture(scope="module")
def tokenizer():
    return make_tiny_tokenizer()


def spec_for(space: SearchSpace, **kwargs) -> database.DatabaseSpec:
    return database.DatabaseSpec.default(space, 4, sequences=SEQS, seq_len=SEQ_LEN, **kwargs)


def build(kind: str, path, tokenizer, **kwargs):
    model = make_tiny(kind)
    adapter = get_adapter(model)
    space = SearchSpace(adapter.shape())
    db = database.build_database(model, adapter, tokenizer, path, spec_for(space, **kwargs), progress=False)
    return model, adapter, space, db


def files(path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def killed_on_third_block(build_fn) -> None:
    """Run `build_fn` with the third block write interrupted (as a kill would)."""
    run_killed(database, "_write_block", build_fn, nth=3)


def test_default_levels():
    space = SearchSpace(get_adapter(make_tiny("llama-gqa")).shape())  # 3 heads per KV group, MLP 96
    spec = database.DatabaseSpec.default(space, 4)
    assert spec.attn_units == (3, 2, 1, 0) and spec.mlp_widths == (96, 64, 32, 0)
    mha = SearchSpace(get_adapter(make_tiny("qwen2-mha")).shape())
    assert database.DatabaseSpec.default(mha).attn_units == (4, 3, 2, 1, 0)
    with pytest.raises(TracenasError):
        database.DatabaseSpec((3, 1), (96, 0)).check(space)  # does not reach 0 attention units
    with pytest.raises(TracenasError):
        database.DatabaseSpec((3, 0), (96, 50, 0)).check(space)  # 50 is off the 32-channel grid


@pytest.mark.parametrize("kind", ["llama-gqa", "qwen2-mha"])
def test_killed_build_resumes_byte_identical(kind, tokenizer, tmp_path):
    build(kind, tmp_path / "whole", tokenizer)
    killed_on_third_block(lambda: build(kind, tmp_path / "resumed", tokenizer))
    assert not database.SparsityDatabase.open(tmp_path / "resumed").complete
    build(kind, tmp_path / "resumed", tokenizer)
    assert files(tmp_path / "resumed") == files(tmp_path / "whole")


def test_stale_database_is_refused(tokenizer, tmp_path):
    model, adapter, space, db = build("llama-gqa", tmp_path / "db", tokenizer)
    with pytest.raises(TracenasError, match="method differ"):
        database.build_database(model, adapter, tokenizer, tmp_path / "db", spec_for(space, importance="wanda"),
                                progress=False)
    other = make_tiny("llama-gqa", seed=5)
    with pytest.raises(TracenasError, match="model differ"):
        database.build_database(other, get_adapter(other), tokenizer, tmp_path / "db", spec_for(space), progress=False)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("x")
    with pytest.raises(TracenasError, match="not empty"):
        database.build_database(model, adapter, tokenizer, tmp_path / "junk", spec_for(space), progress=False)


@pytest.mark.parametrize("kind", ["llama-gqa", "qwen2-mha"])
@pytest.mark.parametrize("importance", ["obs", "wanda"])
def test_stored_levels_are_the_dense_reconstruction(kind, importance, tokenizer, tmp_path):
    """Every stored level is `reconstruct(..., inputs="dense")` of its kept set, and levels are nested."""
    model, adapter, space, db = build(kind, tmp_path / "db", tokenizer, importance=importance)
    batches = token_batches(tokenizer, split="calibration", num_sequences=SEQS, seq_len=SEQ_LEN)
    asm = database.LevelAssembler(copy.deepcopy(model), adapter.__class__(model), db)
    n = space.shape.num_layers
    for k in (1, 2):
        levels = database.Levels((k,) * n, (k,) * n)
        sel = asm.selection(levels)
        rec = reconstruct(model, adapter, sel, batches, inputs="dense", micro_batch=SEQS)
        for i in range(n):
            for kind_, name in (("attn", "o_proj"), ("mlp", "down_proj")):
                kept, weight = db.sub_block(i, kind_, k)
                assert torch.allclose(weight, rec.weights[i][name], atol=1e-5)
                bigger, _ = db.sub_block(i, kind_, k - 1) if k > 1 else (tuple(range(10_000)), None)
                assert set(kept) <= set(bigger)


@pytest.mark.parametrize("kind", ["llama-gqa", "qwen2-mha"])
def test_assembled_candidate_exports_exactly(kind, tokenizer, tmp_path):
    model, adapter, space, db = build(kind, tmp_path / "db", tokenizer)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    asm = database.LevelAssembler(model, adapter, db)
    levels = database.Levels((1, 2, 3, 0), (1, 3, 0, 2))  # block 1: attention only, block 2: MLP only
    assert asm.apply(levels) == 6  # sub-blocks off level 0
    loads = asm.loads
    assert asm.apply(levels) == 0 and asm.loads == loads  # nothing changed, nothing read
    moved = database.Levels((1, 2, 3, 0), (2, 3, 0, 2))
    assert asm.apply(moved) == 1 and asm.loads == loads + 1  # one sub-block read from disk
    sel = asm.selection()
    x = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = model(x).logits
    path = export_pruned(model, None, sel, tmp_path / "out")
    small = load_pruned(path, attn_implementation="eager")
    with torch.no_grad():
        assert torch.allclose(small(x).logits, want, atol=1e-5, rtol=1e-5)
    genome = database.levels_to_genome(db, space, moved)
    assert sum(p.numel() for p in small.parameters()) == space.params(genome)
    asm.apply(database.Levels((0,) * 4, (0,) * 4))
    for k, v in model.state_dict().items():
        assert torch.equal(v, original[k]), k


def test_masked_selection_matches_assembled_model(tokenizer, tmp_path):
    """The assembled model = the base model with the database weights written in and the selection masked."""
    model, adapter, space, db = build("llama-gqa", tmp_path / "db", tokenizer)
    base = copy.deepcopy(model)
    asm = database.LevelAssembler(model, adapter, db)
    asm.apply(database.Levels((2, 2, 1, 3), (1, 0, 2, 2)))
    sel = asm.selection()
    x = torch.randint(0, 128, (1, 12), generator=torch.Generator().manual_seed(2))
    base_adapter = get_adapter(base)
    for i, layer in enumerate(base_adapter.layers()):
        for kind, name in (("attn", "o_proj"), ("mlp", "down_proj")):
            level = asm.current.attn[i] if kind == "attn" else asm.current.mlp[i]
            kept, weight = db.sub_block(i, kind, level)
            if weight is not None:
                proj = base_adapter.attn_proj(layer, name) if kind == "attn" else base_adapter.mlp_proj(layer, name)
                cols = torch.tensor(kept) if kind == "mlp" else torch.cat([torch.arange(h * 8, h * 8 + 8) for h in kept])
                proj.weight.data[:, cols] = weight
    with torch.no_grad(), masked(base, base_adapter, sel):
        want = base(x).logits
    with torch.no_grad():
        assert torch.allclose(model(x).logits, want, atol=1e-5)


def test_cli_build_and_info(tmp_path, capsys, monkeypatch):
    from conftest import save_tiny

    base = save_tiny(tmp_path / "base", "llama-gqa")
    out = tmp_path / "db"
    args = ["database", "build", str(out), "--model", str(base), "--mlp-levels", "3", "--calib-sequences", "2",
            "--calib-seq-len", "16"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "complete" in text and "MLP levels (channels kept): [96, 64, 0]" in text
    assert (out / "database.yaml").is_file() and (out / "database.log").is_file()
    assert main(["database", "info", str(out)]) == 0
    assert main(args[:-2] + ["--calib-seq-len", "24"]) == 2
    assert "other settings" in capsys.readouterr().err
    assert main(["database", "info", str(tmp_path / "none")]) == 2


def test_library_stage_guards_its_directory(tmp_path):
    """`build(cfg)` is the stage behind `tracenas database build`: a kill keeps what can be resumed, a failure
    before that leaves the disk as it was, and `is_done` tells a finished database with the asked settings."""
    import dataclasses

    from conftest import save_tiny

    from tracenas.prune.database_stage import DatabaseConfig, build, info, is_done

    base = save_tiny(tmp_path / "base", "llama-gqa")
    cfg = DatabaseConfig(out=str(tmp_path / "db"), model=str(base), mlp_levels=3, calib_sequences=2, calib_seq_len=16)
    killed_on_third_block(lambda: build(cfg, progress=False))
    assert (tmp_path / "db" / "manifest.json").is_file() and not is_done(cfg.out)
    assert "incomplete" in info(cfg.out)
    db = build(cfg, progress=False)
    assert db.complete and is_done(cfg.out) and is_done(cfg.out, cfg)
    assert not is_done(cfg.out, dataclasses.replace(cfg, damp=0.02)) and not is_done(tmp_path / "none")
    assert info(cfg.out).startswith(f"database {cfg.out} (complete)")
    with pytest.raises(TracenasError, match="no such model"):
        build(dataclasses.replace(cfg, out=str(tmp_path / "new" / "db"), model=str(tmp_path / "absent")))
    assert not (tmp_path / "new").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    with pytest.raises(TracenasError, match="not empty"):
        build(dataclasses.replace(cfg, out=str(tmp_path / "mine")), progress=False)
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]


def test_killed_expected_input_build_resumes_byte_identical(tokenizer, tmp_path):
    """A tyr supernet round (per-block levels, expected inputs): the resumed build rebuilds the expected stream
    from the blocks already on disk and ends byte-identical to an uninterrupted one."""
    per_block = (((3, 2, 1), (96, 64, 32)), ((2, 1, 0), (64, 32, 0)), ((3, 2), (96, 64)), ((1, 0), (32, 0)))
    spec = database.DatabaseSpec((), (), sequences=SEQS, seq_len=SEQ_LEN, inputs="expected", per_block=per_block)

    def run(out):
        model = make_tiny("llama-gqa")
        return database.build_database(model, get_adapter(model), tokenizer, out, spec, progress=False)

    run(tmp_path / "whole")
    killed_on_third_block(lambda: run(tmp_path / "resumed"))
    db = run(tmp_path / "resumed")
    assert files(tmp_path / "resumed") == files(tmp_path / "whole")
    assert db.per_block == per_block and db.manifest["fingerprint"]["method"]["inputs"] == "expected"
