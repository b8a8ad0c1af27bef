"""The sparsity-level database: every block's attention and MLP pre-pruned and reconstructed at fixed levels.

    db = build_database(model, adapter, tokenizer, "runs/db", DatabaseSpec.default(space))
    db = SparsityDatabase.open("runs/db", expect=spec.fingerprint(...))   # refuses a stale one
    levels = Levels(attn=(0,) * n, mlp=(3,) * n)                        # level index per sub-block
    assembler = LevelAssembler(model, adapter, db); assembler.apply(levels)   # swaps only what changed

Level `k` of a sub-block keeps `db.attn_units[k]` attention units (query heads per KV group under GQA,
heads under MHA) or `db.mlp_widths[k]` MLP channels; the lists run from the full sub-block (level 0) down
to 0 (the last level removes the sub-block, as DarwinLM's top level does). Each stored level holds the
kept indices and the re-solved consumer columns (`o_proj` / `down_proj`, dense-model inputs, see
`tracenas.prune.reconstruct`); level 0 is the model's own weights and the last level has nothing to store.
Within a sub-block the kept sets are nested (one removal order per sub-block: greedy OBS or Wanda).

On disk: `manifest.json` (levels, settings, fingerprint) and `block-NNN.safetensors`, one per block, each
written atomically once complete. A build killed midway resumes at the first missing block (earlier blocks
are only run forward to rebuild their outputs), and ends byte-identical to an uninterrupted build. The
fingerprint covers the model (source, shape, a checksum of the weights), the calibration tokens, the
levels and the method; opening or resuming with other settings is refused with one line.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from tracenas.arch import Genome, Levels, LevelTables, SearchSpace, default_level_tables
from tracenas.runtime.config import atomic_write_json
from tracenas.runtime.errors import RunDirError, TracenasError
from tracenas.runtime.rundir import save_tensors
from tracenas.prune.masking import LayerSelection, head_rows, top_channels, top_heads
from tracenas.models.adapter import ModelAdapter
from tracenas.models.shape import ModelShape
from tracenas.prune.reconstruct import (
    IMPORTANCES, BlockInputs, Gram, SolveSettings, block_pass, capture_block_inputs, kept_by_order,
    consumer_input, obs_channel_order, obs_order, head_units, prune_attention_, prune_mlp_, run_block, solve,
)

log = logging.getLogger(__name__)

FORMAT = 1
MANIFEST = "manifest.json"
DEFAULT_MLP_LEVELS = 11
INPUT_REGIMES = ("dense", "expected", "expected-uniform")


def block_file(i: int) -> str:
    return f"block-{i:03d}.safetensors"


@dataclass(frozen=True)
class DatabaseSpec(SolveSettings, LevelTables):
    """What a database holds: the levels of every sub-block, how kept units are chosen, and (`SolveSettings`)
    how they are solved on which calibration tokens."""

    attn_units: tuple[int, ...]  # level k keeps attn_units[k] units; descending, first = all, last = 0
    mlp_widths: tuple[int, ...]  # level k keeps mlp_widths[k] channels; descending, first = all, last = 0
    importance: str = "obs"
    dtype: str = "float32"  # of the stored weights (bfloat16 halves the disk size of a big model's database)
    # Týr's supernet rounds: per block (attention units, MLP widths), each descending; None = the global lists
    per_block: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...] | None = None
    # "dense": dense-model inputs; "expected": upstream blocks at their expected levels (density-weighted),
    # "expected-uniform": the same with every level weighted alike (see `expected_consumer_`)
    inputs: str = "dense"

    @classmethod
    def default(cls, space: SearchSpace, mlp_levels: int = DEFAULT_MLP_LEVELS, **kwargs) -> "DatabaseSpec":
        """Every KV-valid attention count; `mlp_levels` MLP widths evenly spaced from full to 0, on the grid."""
        if mlp_levels < 2:
            raise TracenasError(f"a database needs >= 2 MLP levels (full and removed), got {mlp_levels}")
        return cls(*default_level_tables(space, mlp_levels), **kwargs)

    def check(self, space: SearchSpace) -> None:
        if self.per_block is None:
            for name, values, full in (("attention", self.attn_units, space.attn_units),
                                       ("MLP", self.mlp_widths, space.shape.intermediate_size)):
                if values[0] != full or values[-1] != 0:
                    raise TracenasError(f"{name} levels must run strictly down from {full} (full) to 0, got "
                                        f"{list(values)}")
        elif len(self.per_block) != space.shape.num_layers:
            raise TracenasError(f"per-block levels cover {len(self.per_block)} blocks, the model has "
                                f"{space.shape.num_layers}")
        for i in range(len(self.per_block) if self.per_block is not None else 1):
            attn, mlp = self.tables(i)
            for name, values, full in (("attention", attn, space.attn_units),
                                       ("MLP", mlp, space.shape.intermediate_size)):
                if not values or list(values) != sorted(set(values), reverse=True) or values[0] > full or values[-1] < 0:
                    raise TracenasError(f"{name} levels must run strictly down within [0, {full}], got {list(values)}")
            for w in mlp:
                if w not in (0, space.mlp_width(w / space.shape.intermediate_size)):
                    raise TracenasError(f"MLP width {w} is not on the grid (multiples of {space.mlp_multiple})")
        if self.inputs not in INPUT_REGIMES:
            raise TracenasError(f"database inputs must be one of {', '.join(INPUT_REGIMES)}, got {self.inputs!r}")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise TracenasError(f"database dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        if self.importance not in IMPORTANCES:
            raise TracenasError(f"importance must be one of {', '.join(IMPORTANCES)}, got {self.importance!r}")


def model_checksum(model: nn.Module) -> str:
    """A checksum of every parameter's values (sha256 over float32 bytes, in `named_parameters` order)."""
    digest = hashlib.sha256()
    for name, p in model.named_parameters():
        digest.update(name.encode())
        digest.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def fingerprint(spec: DatabaseSpec, shape: ModelShape, model_sum: str, batches: torch.Tensor, source: str | None) -> dict:
    """Everything a database's contents depend on (compared field by field on open / resume)."""
    tokens = hashlib.sha256(batches.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()[:16]
    method = {k: v for k, v in asdict(spec).items() if k not in ("attn_units", "mlp_widths", "micro_batch", "per_block")}
    if spec.inputs == "dense":
        del method["inputs"]  # databases built before expected inputs existed keep their fingerprint
    if spec.per_block is None:
        levels: dict = {"attn_units": list(spec.attn_units), "mlp_widths": list(spec.mlp_widths)}
    else:
        levels = {"per_block": [{"attn": list(a), "mlp": list(m)} for a, m in spec.per_block]}
    return {"format": FORMAT, "model": {"source": source, "shape": shape.as_dict(), "checksum": model_sum},
            "calibration_tokens": tokens, "levels": levels, "method": method}


def _differences(have: dict, want: dict) -> list[str]:
    return [k for k in sorted(set(have) | set(want)) if have.get(k) != want.get(k)]


class SparsityDatabase(LevelTables):
    """Read access to a built database (lazy: a block's file is opened when one of its levels is asked for)."""

    def __init__(self, path: Path, manifest: dict):
        self.path = path
        self.manifest = manifest
        levels = manifest["fingerprint"]["levels"]
        self.shape = ModelShape(**manifest["fingerprint"]["model"]["shape"])
        self.num_layers: int = self.shape.num_layers
        if "per_block" in levels:  # a Týr supernet round: every block has levels of its own
            self.per_block: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...] | None = tuple(
                (tuple(b["attn"]), tuple(b["mlp"])) for b in levels["per_block"])
            self.attn_units: tuple[int, ...] = ()
            self.mlp_widths: tuple[int, ...] = ()
        else:
            self.per_block = None
            self.attn_units = tuple(levels["attn_units"])
            self.mlp_widths = tuple(levels["mlp_widths"])

    @classmethod
    def open(cls, path: str | os.PathLike, expect: dict | None = None) -> "SparsityDatabase":
        path = Path(path)
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            raise RunDirError(f"no sparsity-level database in {path} (build one with `tracenas database build`)")
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise RunDirError(f"{manifest_path} is corrupt: {err}") from err
        if expect is not None and manifest.get("fingerprint") != expect:
            diff = _differences(manifest.get("fingerprint") or {}, expect)
            raise TracenasError(f"the database in {path} was built for other settings ({', '.join(diff)} differ): "
                                "build it again in a new directory")
        db = cls(path, manifest)
        missing = [i for i in range(db.num_layers) if not (path / block_file(i)).is_file()]
        if missing and manifest.get("complete"):
            raise RunDirError(f"the database in {path} lacks {block_file(missing[0])}")
        return db

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    def num_levels(self, kind: str, layer: int = 0) -> int:
        return len(self.table(layer, kind))

    def full_units(self, kind: str) -> int:
        return self.shape.attn_units if kind == "attn" else self.shape.intermediate_size

    def sub_block(self, layer: int, kind: str, level: int) -> tuple[tuple[int, ...], torch.Tensor | None]:
        """(kept indices, re-solved consumer columns) of one sub-block at one level; None = the model's own
        weights (a full level) or nothing (a removed level)."""
        from safetensors import safe_open

        table = self.table(layer, kind)
        if not 0 <= level < len(table):
            raise TracenasError(f"{kind} level {level} is outside [0, {len(table) - 1}]")
        if table[level] == 0:
            return (), None
        if table[level] == self.full_units(kind):
            return tuple(range(self.shape.num_heads if kind == "attn" else self.shape.intermediate_size)), None
        with safe_open(str(self.path / block_file(layer)), framework="pt") as f:
            kept = tuple(f.get_tensor(f"{kind}.{level}.kept").tolist())
            weight = f.get_tensor(f"{kind}.{level}.weight")
        return kept, weight

    def disk_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.iterdir() if f.is_file())


# --- building ----------------------------------------------------------------------------------------
def _wanda_scores(weight: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Wanda importance per input column from the Gram diagonal: sum_i |W_ij| * ||x_j||."""
    return weight.detach().abs().double().cpu().sum(0) * torch.diagonal(h).clamp_min(0).sqrt()


def _attn_levels(weight: torch.Tensor, h: torch.Tensor, shape: ModelShape, units: tuple[int, ...],
                 spec: DatabaseSpec) -> list[tuple[int, ...]]:
    """Kept query heads at each attention level (nested)."""
    per_unit = shape.heads_per_unit
    if spec.importance == "obs":
        head_cols, rounds = head_units(shape)
        order = obs_order(weight, h, head_cols, spec.damp, rounds, stop=0)
        return [kept_by_order(order, shape.num_heads, u * per_unit) for u in units]
    cols = _wanda_scores(weight, h)
    scores = cols.view(shape.num_heads, shape.head_dim).sum(1)
    return [top_heads(shape, scores, u * per_unit)[0] for u in units]


def _mlp_levels(weight: torch.Tensor, h: torch.Tensor, widths: tuple[int, ...], spec: DatabaseSpec) -> list[tuple[int, ...]]:
    if spec.importance == "obs":
        order = obs_channel_order(weight, h, spec.damp, stop=0, chunk=spec.obs_chunk)
        return [kept_by_order(order, h.shape[0], w) for w in widths]
    scores = _wanda_scores(weight, h)
    return [top_channels(scores, w) for w in widths]


def _attn_tensors(adapter: ModelAdapter, layer: nn.Module, shape: ModelShape, spec: DatabaseSpec,
                  units: tuple[int, ...], gram: Gram) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    w_o = adapter.attn_proj(layer, "o_proj").weight
    h, _, cross = gram.means()
    for k, heads in enumerate(_attn_levels(w_o, h, shape, units, spec)):
        if not heads:
            continue
        out[f"attn.{k}.kept"] = torch.tensor(heads, dtype=torch.int64)
        if units[k] < shape.attn_units:
            new = solve(w_o, h, cross, head_rows(heads, shape.head_dim), spec.damp)
            out[f"attn.{k}.weight"] = new.to(getattr(torch, spec.dtype)).contiguous()
    return out


def _mlp_tensors(adapter: ModelAdapter, layer: nn.Module, shape: ModelShape, spec: DatabaseSpec,
                 widths: tuple[int, ...], gram: Gram) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    w_d = adapter.mlp_proj(layer, "down_proj").weight
    h, _, cross = gram.means()
    for k, channels in enumerate(_mlp_levels(w_d, h, widths, spec)):
        if not channels:
            continue
        out[f"mlp.{k}.kept"] = torch.tensor(channels, dtype=torch.int64)
        if widths[k] < shape.intermediate_size:
            kept = torch.tensor(channels, dtype=torch.long)
            out[f"mlp.{k}.weight"] = solve(w_d, h, cross, kept, spec.damp).to(getattr(torch, spec.dtype)).contiguous()
    return out


def expected_consumer_(lin: nn.Linear, kind: str, units: tuple[int, ...], tensors: dict[str, torch.Tensor],
                       head_dim: int, weighting: str = "density") -> None:
    """Set a consumer (`o_proj` / `down_proj`) to the expectation over a sub-block's levels (`units`: what each
    keeps) of its level weights, each embedded at full width (pruned columns 0, a removed level all 0, a full
    level the original weights): the block then outputs the expectation of its output over its levels (Týr's
    expected error accumulation; exact, because a sub-block's output is linear in its consumer weights).

    `weighting`: "density" weighs level k by the fraction it keeps, sum_k d_k W_k / sum_k d_k (the weighted
    expectation written, commented out, in Týr's code), so the removed level, which has density 0, cannot
    shrink the stream toward zero; "uniform" weighs every level alike."""
    original = lin.weight.detach().clone()
    # density: each level's kept units (the common full size cancels in the normalization)
    weights = [float(u) if weighting == "density" else 1.0 for u in units]
    total = torch.zeros_like(original, dtype=torch.float64)
    bias_weight = 0.0
    for k, w in enumerate(weights):
        kept = tensors.get(f"{kind}.{k}.kept")
        if kept is None or w == 0:
            continue  # removed: contributes 0
        bias_weight += w
        weight = tensors.get(f"{kind}.{k}.weight")
        if weight is None:
            total += w * original.double()
        else:
            cols = head_rows(tuple(kept.tolist()), head_dim) if kind == "attn" else kept
            total[:, cols.to(total.device)] += w * weight.to(total.device, torch.float64)
    norm = sum(weights) or 1.0
    lin.weight.data.copy_((total / norm).to(original.dtype))
    if lin.bias is not None:
        lin.bias.data.mul_(bias_weight / norm)


def _write_block(path: Path, i: int, tensors: dict[str, torch.Tensor]) -> None:
    final = path / block_file(i)
    tmp = final.with_name(final.name + ".tmp")
    # one metadata key: safetensors writes a map in no fixed order, and a resumed build must be byte-identical
    save_tensors(tensors, tmp, metadata={"format": "pt"})
    os.replace(tmp, final)


def _start(path: Path, want: dict) -> None:
    """Check the database being resumed in `path` against the fingerprint `want`, or write the manifest of a new
    one (in a directory holding nothing but logs and settings); then drop block files a kill left half-written."""
    if (path / MANIFEST).is_file():
        SparsityDatabase.open(path, expect=want)  # refuses a database built for other settings
        log.info("resuming the database in %s", path)
    else:
        path.mkdir(parents=True, exist_ok=True)
        if any(p.name != MANIFEST and p.suffix not in (".tmp", ".log", ".yaml") for p in path.iterdir()):
            raise RunDirError(f"{path} is not empty and holds no database: choose a new directory")
        atomic_write_json(path / MANIFEST, {"fingerprint": want, "complete": False})
    for stale in path.glob("*.tmp"):
        stale.unlink()


class _BlockWalk:
    """A build's pass down the blocks, one `step(i)` per block: the calibration stream entering the next block
    (the dense model's, and with expected inputs also the expected one) and the block's file, written unless a
    build before an interruption wrote it already."""

    def __init__(self, adapter: ModelAdapter, path: Path, spec: DatabaseSpec, first: BlockInputs):
        self.adapter, self.path, self.spec = adapter, path, spec
        self.shape = adapter.shape()
        self.layers = adapter.layers()
        self.states, self.kwargs = first.states, first.kwargs
        self.expected = list(self.states) if spec.inputs != "dense" else None
        self.weighting = "uniform" if spec.inputs == "expected-uniform" else "density"
        self.dims = {"o_proj": self.shape.num_heads * self.shape.head_dim, "down_proj": self.shape.intermediate_size}

    def step(self, i: int) -> None:
        done = (self.path / block_file(i)).is_file()
        if self.expected is None:
            self._dense_step(i, done)
        else:
            self._expected_step(i, done)

    def _dense_step(self, i: int, done: bool) -> None:
        """Dense inputs: one pass of the block gives both consumers' inputs and its output."""
        layer = self.layers[i]
        if done:  # built before an interruption: only its outputs are needed
            self.states = [run_block(layer, h, kw) for h, kw in zip(self.states, self.kwargs)]
            return
        grams = {name: Gram(dim, paired=False) for name, dim in self.dims.items()}
        next_states = []
        for h, kw in zip(self.states, self.kwargs):
            out, seen = block_pass(self.adapter, layer, h, kw, tuple(self.dims))
            for name, x in seen.items():
                grams[name].add(x)
            next_states.append(out)
        attn_units, mlp_widths = self.spec.tables(i)
        tensors = _attn_tensors(self.adapter, layer, self.shape, self.spec, attn_units, grams["o_proj"])
        tensors |= _mlp_tensors(self.adapter, layer, self.shape, self.spec, mlp_widths, grams["down_proj"])
        _write_block(self.path, i, tensors)
        self.states = next_states

    def _expected_step(self, i: int, done: bool) -> None:
        """Expected inputs: the dense pass gives the targets (unless the block is on disk already), the expected
        stream the inputs; the attention levels are solved first, and the MLP's inputs come through the
        expected attention."""
        layer = self.layers[i]
        seen = [(run_block(layer, h, kw), None) if done else block_pass(self.adapter, layer, h, kw, tuple(self.dims))
                for h, kw in zip(self.states, self.kwargs)]
        work = copy.deepcopy(layer)
        o_proj, down_proj = self.adapter.attn_proj(work, "o_proj"), self.adapter.mlp_proj(work, "down_proj")
        attn_units, mlp_widths = self.spec.tables(i)
        if done:
            tensors = _read_block(self.path, i)
        else:
            gram = self._expected_gram(work, "o_proj", seen)
            tensors = _attn_tensors(self.adapter, layer, self.shape, self.spec, attn_units, gram)
        expected_consumer_(o_proj, "attn", attn_units, tensors, self.shape.head_dim, self.weighting)
        if not done:
            gram = self._expected_gram(work, "down_proj", seen)
            tensors |= _mlp_tensors(self.adapter, layer, self.shape, self.spec, mlp_widths, gram)
            _write_block(self.path, i, tensors)
        expected_consumer_(down_proj, "mlp", mlp_widths, tensors, self.shape.head_dim, self.weighting)
        self.expected = [run_block(work, e, kw) for e, kw in zip(self.expected, self.kwargs)]
        self.states = [out for out, _ in seen]

    def _expected_gram(self, work: nn.Module, name: str, seen: list) -> Gram:
        """The Gram of consumer `name`'s input on the expected stream (through `work`, the block with its
        upstream consumers already at their expectation), paired with its dense-model input."""
        gram = Gram(self.dims[name], paired=True)
        for (_, x), e, kw in zip(seen, self.expected, self.kwargs):
            gram.add(consumer_input(self.adapter, work, name, e, kw), x[name])
        return gram


@torch.no_grad()
def build_database(model: nn.Module, adapter: ModelAdapter, tokenizer, path: str | os.PathLike, spec: DatabaseSpec,
                   *, source: str | None = None, progress: bool = True, desc: str = "sparsity database") -> SparsityDatabase:
    """Build (or resume building) the database of `model` in `path`; returns it opened.

    With `spec.inputs == "expected"` every block is calibrated on what the blocks above it output at their
    *expected* levels (the expectation over each upstream sub-block's levels, `expected_consumer_`), its attention
    levels solved first and its MLP then fed by the expected attention, the targets staying the dense
    model's consumer outputs (Týr's expectation error accumulation)."""
    from tqdm.auto import tqdm

    from tracenas import data as data_mod

    path = Path(path)
    shape = adapter.shape()
    spec.check(SearchSpace(shape))
    batches = data_mod.token_batches(tokenizer, spec.data, split="calibration", num_sequences=spec.sequences,
                                     seq_len=spec.seq_len, seed=spec.seed)
    want = fingerprint(spec, shape, model_checksum(model), batches, source)
    _start(path, want)
    walk = _BlockWalk(adapter, path, spec, capture_block_inputs(adapter, batches, spec.micro_batch))
    for i in tqdm(range(shape.num_layers), desc=desc, unit="block", disable=not progress):
        walk.step(i)
    atomic_write_json(path / MANIFEST, {"fingerprint": want, "complete": True})
    db = SparsityDatabase.open(path, expect=want)
    log.info("database complete: %d blocks, %.1f MB", shape.num_layers, db.disk_bytes() / 1e6)
    return db


def _read_block(path: Path, i: int) -> dict[str, torch.Tensor]:
    import safetensors.torch

    return safetensors.torch.load_file(str(path / block_file(i)))


def planned_bytes(shape: ModelShape, per_block, value_bytes: int = 4) -> int:
    """Disk size of a database's stored weights (re-solved consumer columns of every level that is neither full
    nor removed; the kept indices, a few kB, are left out), from the shape alone: what a build will write.
    `per_block`: (attention units, MLP widths) per block."""
    cols = 0
    for attn, mlp in per_block:
        cols += sum(u * shape.heads_per_unit * shape.head_dim for u in attn if 0 < u < shape.attn_units)
        cols += sum(w for w in mlp if 0 < w < shape.intermediate_size)
    return cols * shape.hidden_size * value_bytes


# --- assembling candidates ------------------------------------------------------------------------------
def levels_to_genome(db: SparsityDatabase, space: SearchSpace, levels: Levels) -> Genome:
    """The genome of a level assignment (a block with both sub-blocks removed is a dropped block)."""
    return db.to_genome(levels, space)


class LevelAssembler:
    """Holds one full-size model and moves its sub-blocks between database levels in place.

    `apply(levels)` touches only the sub-blocks whose level changed, reading just those entries from disk.
    The model then computes exactly the pruned, reconstructed candidate (pruned weights are zero, removed
    sub-blocks contribute nothing); `selection()` gives the matching `LayerSelection`s for slicing or export.
    The original projection weights are kept on the CPU to restore a sub-block that moves to a bigger level.
    """

    def __init__(self, model: nn.Module, adapter: ModelAdapter, db: SparsityDatabase):
        self.model, self.adapter, self.db = model, adapter, db
        self.shape = adapter.shape()
        if db.num_layers != self.shape.num_layers:
            raise TracenasError(f"the database has {db.num_layers} blocks but the model has {self.shape.num_layers}")
        self._original = [{n: p.weight.detach().cpu().clone() for n, p in adapter.projections(layer).items()}
                          | {f"{n}.bias": p.bias.detach().cpu().clone() for n, p in adapter.projections(layer).items()
                             if p.bias is not None}
                          for layer in adapter.layers()]
        self.current = self._original_levels()
        self._kept: dict[tuple[int, str], tuple[int, ...]] = {}
        self.loads = 0  # sub-block entries read from disk (what `apply` costs)

    def _original_levels(self) -> Levels:
        """The level of each sub-block that is its original weights (the full level), -1 where none is."""
        def full(i: int, kind: str) -> int:
            table = self.db.table(i, kind)
            units = self.db.full_units(kind)
            return table.index(units) if units in table else -1

        n = self.shape.num_layers
        return Levels(tuple(full(i, "attn") for i in range(n)), tuple(full(i, "mlp") for i in range(n)))

    def reset(self, db: "SparsityDatabase | None" = None) -> None:
        """Give every block its original weights back, and (with `db`) read levels from another database from
        now on (Týr's next supernet round)."""
        for i in range(self.shape.num_layers):
            self._restore(i, tuple(self.adapter.projections(self.adapter.layers()[i])))
        if db is not None:
            if db.num_layers != self.shape.num_layers:
                raise TracenasError(f"the database has {db.num_layers} blocks but the model has {self.shape.num_layers}")
            self.db = db
            self._kept = {}
        self.current = self._original_levels()

    def _restore(self, i: int, names: tuple[str, ...]) -> None:
        layer = self.adapter.layers()[i]
        for name, proj in self.adapter.projections(layer).items():
            if name in names:
                proj.weight.data.copy_(self._original[i][name])
                if proj.bias is not None:
                    proj.bias.data.copy_(self._original[i][f"{name}.bias"])

    def apply(self, levels: Levels) -> int:
        """Move to `levels`; returns how many sub-blocks changed."""
        n = self.shape.num_layers
        if len(levels.attn) != n or len(levels.mlp) != n:
            raise TracenasError(f"levels must have {n} entries per sub-block type")
        changed = 0
        layers = self.adapter.layers()
        for i in range(n):
            if levels.attn[i] != self.current.attn[i]:
                self._restore(i, ("q_proj", "k_proj", "v_proj", "o_proj"))
                kept, weight = self._load(i, "attn", levels.attn[i])
                prune_attention_(self.adapter, layers[i], self.shape, kept, weight)
                changed += 1
            if levels.mlp[i] != self.current.mlp[i]:
                self._restore(i, ("gate_proj", "up_proj", "down_proj"))
                kept, weight = self._load(i, "mlp", levels.mlp[i])
                prune_mlp_(self.adapter, layers[i], self.shape, kept, weight)
                changed += 1
        self.current = levels
        return changed

    def _load(self, i: int, kind: str, level: int) -> tuple[tuple[int, ...], torch.Tensor | None]:
        kept, weight = self.db.sub_block(i, kind, level)
        self.loads += weight is not None
        return kept, weight

    def selection(self, levels: Levels | None = None) -> list[LayerSelection]:
        """The heads / channels each block keeps at `levels` (default: the applied ones)."""
        levels = levels or self.current
        out = []
        s = self.shape
        for i, (a, m) in enumerate(zip(levels.attn, levels.mlp)):
            heads = self._kept_at(i, "attn", a)
            channels = self._kept_at(i, "mlp", m)
            kv = (tuple(range(s.num_kv_heads)) if s.is_gqa else heads) if heads else ()
            out.append(LayerSelection(bool(heads or channels), heads, kv, channels))
        return out

    def _kept_at(self, i: int, kind: str, level: int) -> tuple[int, ...]:
        key = (i, f"{kind}.{level}")
        if key not in self._kept:
            self._kept[key] = self.db.sub_block(i, kind, level)[0]
        return self._kept[key]


__all__ = ["DatabaseSpec", "LevelAssembler", "Levels", "SparsityDatabase", "build_database", "fingerprint",
           "expected_consumer_", "planned_bytes",
           "levels_to_genome", "model_checksum"]
