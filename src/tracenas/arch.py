"""Genomes, the search-space grid, and exact parameter counts.

A genome is `(keep, attn, mlp)`: a keep bit per block and a retention ratio per attention and MLP
sub-block. Ratios always sit on the realizable grid (`SearchSpace.snap`), so a genome *is* an
architecture: equal genomes are equal models, which is what lets the search cache scores by genome.

Attention grid: with GQA the unit is "query heads kept per KV group" (K/V stay whole, every group
keeps the same number, so the pruned layer is still a valid GQA layer); with MHA the unit is a head.
MLP grid: multiples of 32 channels (the full width is always allowed).
A ratio of exactly 0 removes that sub-block (attention or MLP) of a kept block together with its norm;
any positive ratio keeps at least one unit. A kept block with both sub-blocks removed is a dropped block.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tracenas.budget import BudgetMetric
from tracenas.runtime.config import format_count, parse_budget_spec
from tracenas.runtime.errors import BudgetError, RunDirError, TracenasError
from tracenas.models.shape import ModelShape

MLP_MULTIPLE = 32


@dataclass(frozen=True)
class Genome:
    keep: tuple[bool, ...]
    attn: tuple[float, ...]
    mlp: tuple[float, ...]

    def __post_init__(self) -> None:
        if not (len(self.keep) == len(self.attn) == len(self.mlp)):
            raise TracenasError("genome lists must have one entry per layer")

    @property
    def num_layers(self) -> int:
        return len(self.keep)

    def key(self) -> str:
        """Canonical string used to cache scores (ratios rounded: they are grid points anyway)."""
        bits = "".join("1" if k else "0" for k in self.keep)
        return f"{bits}|" + ",".join(f"{a:.6f}" for a in self.attn) + "|" + ",".join(f"{m:.6f}" for m in self.mlp)

    def to_dict(self) -> dict[str, Any]:
        return {"keep": [bool(k) for k in self.keep], "attn": list(self.attn), "mlp": list(self.mlp)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Genome":
        try:
            return cls(tuple(bool(k) for k in d["keep"]), tuple(float(a) for a in d["attn"]),
                       tuple(float(m) for m in d["mlp"]))
        except (KeyError, TypeError, ValueError) as err:
            raise TracenasError(f"malformed genome: {err}") from err

    @classmethod
    def full(cls, num_layers: int) -> "Genome":
        return cls((True,) * num_layers, (1.0,) * num_layers, (1.0,) * num_layers)


@dataclass(frozen=True)
class Levels:
    """A candidate of a sparsity-level database (`tracenas.prune.database`) as one level index per sub-block:
    0 = full, the last level = removed. Level `k` of a sub-block keeps `LevelTables.table(layer, kind)[k]` units."""

    attn: tuple[int, ...]
    mlp: tuple[int, ...]

    def to_dict(self) -> dict:
        return {"attn": list(self.attn), "mlp": list(self.mlp)}

    @classmethod
    def from_dict(cls, d: dict) -> "Levels":
        return cls(tuple(int(x) for x in d["attn"]), tuple(int(x) for x in d["mlp"]))


Table = tuple[int, ...]  # units kept at each level of one sub-block, descending (level 0 = the largest)
PerBlock = tuple[tuple[Table, Table], ...]  # (attention units, MLP widths) of every block


class LevelTables:
    """The level tables of a sparsity database (and of the search over it): one attention table
    (`attn_units`) and one MLP table (`mlp_widths`) for every block, or, with `per_block`, each block's
    own (a Týr supernet round). `DatabaseSpec`, `SparsityDatabase` and `LevelSpace` read their levels here."""

    attn_units: Table
    mlp_widths: Table
    per_block: PerBlock | None

    def tables(self, layer: int) -> tuple[Table, Table]:
        """(attention units, MLP widths) of block `layer`'s levels."""
        return self.per_block[layer] if self.per_block is not None else (self.attn_units, self.mlp_widths)

    def table(self, layer: int, kind: str) -> Table:
        """Units kept at each level of one sub-block (`kind` "attn" or "mlp"), descending."""
        return self.tables(layer)[0 if kind == "attn" else 1]

    def units(self, levels: Levels) -> tuple[Table, Table]:
        """(attention units, MLP widths) per block of `levels`."""
        return (tuple(self.table(i, "attn")[k] for i, k in enumerate(levels.attn)),
                tuple(self.table(i, "mlp")[k] for i, k in enumerate(levels.mlp)))

    def to_genome(self, levels: Levels, space: SearchSpace) -> Genome:
        """The genome of a level assignment (a block with both sub-blocks removed is a dropped block)."""
        attn_u, mlp_w = self.units(levels)
        attn = tuple(u / space.attn_units for u in attn_u)
        mlp = tuple(w / space.shape.intermediate_size for w in mlp_w)
        return Genome(tuple(a > 0 or m > 0 for a, m in zip(attn, mlp)), attn, mlp)


def default_level_tables(space: SearchSpace, mlp_levels: int) -> tuple[Table, Table]:
    """A sparsity database's default levels: every attention unit count from all to 0, and `mlp_levels` MLP
    widths evenly spaced from full to 0, on the grid (repeats dropped)."""
    attn = tuple(range(space.attn_units, -1, -1))
    widths: list[int] = []
    for k in range(mlp_levels):
        w = space.mlp_width(1.0 - k / (mlp_levels - 1))
        if w not in widths:
            widths.append(w)
    return attn, tuple(widths)


@dataclass(frozen=True)
class LayerArch:
    """Realized size of one block of the pruned model."""

    index: int  # index in the base model
    keep: bool
    num_heads: int  # query heads
    num_kv_heads: int
    mlp_width: int

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "keep": self.keep, "num_heads": self.num_heads,
                "num_kv_heads": self.num_kv_heads, "mlp_width": self.mlp_width}


@dataclass(frozen=True)
class SearchSpace:
    """The realizable grid for one base model, and what its budget counts (`metric`)."""

    shape: ModelShape
    min_layers: int = 1
    include_embeddings: bool = True
    mlp_multiple: int = MLP_MULTIPLE
    metric: BudgetMetric = BudgetMetric()

    def __post_init__(self) -> None:
        if not 1 <= self.min_layers <= self.shape.num_layers:
            raise TracenasError(f"--min-layers must be in [1, {self.shape.num_layers}], got {self.min_layers}")

    # attention units: query heads per KV group (GQA) or heads (MHA)
    @property
    def attn_units(self) -> int:
        return self.shape.attn_units

    @property
    def mlp_units(self) -> int:
        return max(1, self.shape.intermediate_size // self.mlp_multiple)

    def attn_count(self, ratio: float) -> int:
        """Attention units kept at `ratio` (0 only for a ratio of exactly 0: the sub-block is removed)."""
        if ratio <= 0:
            return 0
        return min(self.attn_units, max(1, round(ratio * self.attn_units)))

    def mlp_width(self, ratio: float) -> int:
        """MLP channels kept at `ratio` (0 only for a ratio of exactly 0: the sub-block is removed)."""
        size = self.shape.intermediate_size
        if ratio <= 0:
            return 0
        if size <= self.mlp_multiple:
            return size
        width = round(ratio * size / self.mlp_multiple) * self.mlp_multiple
        if ratio >= 1.0 or width >= size:
            return size
        return max(self.mlp_multiple, width)

    def snap_attn(self, ratio: float) -> float:
        return self.attn_count(ratio) / self.attn_units

    def snap_mlp(self, ratio: float) -> float:
        return self.mlp_width(ratio) / self.shape.intermediate_size

    def snap(self, genome: Genome) -> Genome:
        attn = tuple(self.snap_attn(a) for a in genome.attn)
        mlp = tuple(self.snap_mlp(m) for m in genome.mlp)
        # a block with neither attention nor MLP left computes nothing: it is a dropped block
        keep = tuple(bool(k) and (a > 0 or m > 0) for k, a, m in zip(genome.keep, attn, mlp))
        return Genome(keep, attn, mlp)

    def validate(self, genome: Genome) -> None:
        if genome.num_layers != self.shape.num_layers:
            raise TracenasError(
                f"genome has {genome.num_layers} layers but the model has {self.shape.num_layers}")
        if sum(genome.keep) < self.min_layers:
            raise TracenasError(f"genome keeps {sum(genome.keep)} blocks, fewer than min_layers={self.min_layers}")
        for i, (k, a, m) in enumerate(zip(genome.keep, genome.attn, genome.mlp)):
            if not (0 <= a <= 1 and 0 <= m <= 1):
                raise TracenasError("retention ratios must lie in [0, 1] (0 removes the sub-block)")
            if k and a == 0 and m == 0:
                raise TracenasError(f"block {i} is kept with neither attention nor MLP: drop it instead")

    # --- realization -------------------------------------------------------------------------
    def layer_arch(self, genome: Genome) -> list[LayerArch]:
        s = self.shape
        out = []
        for i, (k, a, m) in enumerate(zip(genome.keep, genome.attn, genome.mlp)):
            if s.is_gqa:
                heads = self.attn_count(a) * s.num_kv_heads
                kv = s.num_kv_heads if heads else 0
            else:
                heads = kv = self.attn_count(a)
            out.append(LayerArch(i, bool(k), heads, kv, self.mlp_width(m)))
        return out

    def layer_params(self, arch: LayerArch) -> int:
        s = self.shape
        if not arch.keep:
            return 0
        fixed = s.layer_fixed_params
        if arch.num_heads == 0:  # attention removed, with its norm (and o_proj bias, per-head-dim norms)
            fixed -= s.attn_fixed_params
        if arch.mlp_width == 0:
            fixed -= s.mlp_fixed_params
        return (fixed + arch.num_heads * s.q_head_params + arch.num_kv_heads * s.kv_head_params
                + arch.mlp_width * s.mlp_channel_params)

    def params(self, genome: Genome, include_embeddings: bool | None = None) -> int:
        """Exact parameter count of the sliced model (equals its `numel()` with embeddings included)."""
        emb = self.include_embeddings if include_embeddings is None else include_embeddings
        fixed = self.shape.fixed_params - (0 if emb else self.shape.embedding_params)
        return fixed + sum(self.layer_params(la) for la in self.layer_arch(genome))

    def base_params(self, include_embeddings: bool | None = None) -> int:
        return self.params(Genome.full(self.shape.num_layers), include_embeddings)

    def memory_bytes(self, genome: Genome) -> int:
        """Weights (all of them, embeddings included) + KV cache, in bytes (see `BudgetMetric`)."""
        m, s = self.metric, self.shape
        kv = sum(2 * la.num_kv_heads * s.head_dim for la in self.layer_arch(genome) if la.keep)
        return (self.params(genome, include_embeddings=True) + kv * m.context * m.batch) * m.dtype_bytes

    def flops_per_token(self, genome: Genome) -> int:
        """FLOPs of one generated token at position `metric.context` (see `BudgetMetric`)."""
        s, context = self.shape, self.metric.context
        total = 2 * s.vocab_size * s.hidden_size  # output layer
        for la in self.layer_arch(genome):
            if la.keep:
                q, kv = la.num_heads * s.head_dim, la.num_kv_heads * s.head_dim
                weights = s.hidden_size * (2 * q + 2 * kv) + 3 * s.hidden_size * la.mlp_width
                total += 2 * weights + 4 * q * context
        return total

    def cost(self, genome: Genome) -> int:
        """What the budget counts for `genome`, in `metric.unit`: the one number the search keeps in budget."""
        kind = self.metric.kind
        if kind == "params":
            return self.params(genome)
        return self.memory_bytes(genome) if kind == "memory" else self.flops_per_token(genome)

    def base_cost(self) -> int:
        return self.cost(Genome.full(self.shape.num_layers))

    def reachable(self) -> tuple[int, int]:
        """Smallest and largest costs (parameters by default) the space can express."""
        n = self.shape.num_layers
        keep = tuple(i < self.min_layers for i in range(n))
        smallest = 1e-9  # the least positive retention: one unit of each sub-block
        lo = self.cost(self.snap(Genome(keep, (smallest,) * n, (smallest,) * n)))
        return lo, self.base_cost()

    def resolve_budget(self, budget: str | float | int) -> int:
        """`81M`, `2.7B`, `123456` (absolute, in `metric.unit`; memory also `300MB`, `1.5GiB`) or `0.6` (fraction
        of the base model's cost) -> a count, checked against what the space can reach."""
        count = parse_budget(budget, self.base_cost())
        lo, hi = self.reachable()
        if not lo <= count < hi:
            emb = "" if self.include_embeddings or self.metric.kind != "params" else " (embeddings excluded)"
            raise BudgetError(
                f"budget {format_count(count)} is outside what this search space can reach: "
                f"[{format_count(lo)}, {format_count(hi)}) {self.metric.unit}{emb} with min_layers={self.min_layers}"
            )
        return count

    def to_arch_dict(self, genome: Genome) -> dict[str, Any]:
        layers = self.layer_arch(genome)
        return {
            "genome": genome.to_dict(),
            "layers": [la.to_dict() for la in layers],
            "num_layers_kept": sum(la.keep for la in layers),
            "params": self.params(genome, include_embeddings=True),
            "params_without_embeddings": self.params(genome, include_embeddings=False),
            "base_params": self.base_params(include_embeddings=True),
            **({} if self.metric.kind == "params" else {
                "budget_metric": self.metric.describe(), "memory_bytes": self.memory_bytes(genome),
                "flops_per_token": self.flops_per_token(genome)}),
        }


def parse_budget(budget: str | float | int, base: int) -> int:
    """A budget (see `parse_budget_spec`) as a parameter count for a model of `base` parameters."""
    kind, value = parse_budget_spec(budget)
    return int(value * base) if kind == "fraction" else int(round(value))


@dataclass
class ArchFile:
    """Contents of `arch.json`."""

    model: dict[str, Any]
    arch: dict[str, Any]
    score: float | None = None
    proxy: str | None = None
    budget: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def genome(self) -> Genome:
        return Genome.from_dict(self.arch["genome"])

    def to_json(self) -> str:
        d = {"model": self.model, **self.arch, "score": self.score, "proxy": self.proxy, "budget": self.budget}
        d.update(self.extra)
        return json.dumps(d, indent=2)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of `arch.json` (what `to_json` writes)."""
        return json.loads(self.to_json())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ArchFile":
        arch = {k: d[k] for k in ARCH_KEYS if k in d}
        known = set(ARCH_KEYS) | {"model", "score", "proxy", "budget"}
        return cls(d.get("model") or {}, arch, d.get("score"), d.get("proxy"), d.get("budget"),
                   {k: v for k, v in d.items() if k not in known})

    @classmethod
    def read(cls, path: str | os.PathLike) -> "ArchFile":
        """The one reader of `arch.json` (a run directory or the file), with one-line errors."""
        path = Path(path)
        if path.is_dir():
            path = path / "arch.json"
        if not path.is_file():
            raise RunDirError(f"no {path.name} in {path.parent} (run `tracenas search` first, or pass --arch)")
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise RunDirError(f"{path} is corrupt: {err}") from err
        if not isinstance(data, dict):
            raise RunDirError(f"{path} is corrupt: expected a JSON object")
        missing = [k for k in ("genome", "selection") if k not in data]
        if missing:
            raise RunDirError(f"{path} lacks {', '.join(missing)} (written by an incomplete or older search?)")
        return cls.from_dict(data)

    def source_spec(self) -> str | None:
        """The base model to load: the embedded default by name, else the recorded path where it still
        exists, else the spec as the user gave it (a Hub id, or a path relative to the cwd)."""
        from tracenas.models.defaults import DEFAULT_MODEL

        spec, path, gguf = self.model.get("spec"), self.model.get("path"), self.model.get("gguf_file")
        if spec == DEFAULT_MODEL:
            return spec
        if path and gguf and (Path(path) / gguf).is_file():
            return str(Path(path) / gguf)
        if path and (Path(path) / "config.json").is_file():
            return str(path)
        return spec or path


ARCH_KEYS = ("genome", "layers", "num_layers_kept", "params", "params_without_embeddings", "base_params")
