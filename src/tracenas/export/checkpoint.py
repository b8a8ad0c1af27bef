"""Export a pruned architecture as an ordinary Hugging Face checkpoint, and load it back.

    tracenas export runs/demo                      # runs/demo/arch.json -> runs/demo/model/

    from tracenas.export.checkpoint import export_pruned, export_run
    from tracenas.models.pruned import load_pruned
    path = export_pruned(model, tokenizer, selection, "out/model", dtype="bfloat16")
    small = load_pruned(path)                      # or, without tracenas installed:
    # AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)

A checkpoint holds `config.json`, `model.safetensors` (sharded with an index above
`max_shard_size`), `generation_config.json`, the tokenizer files and a `README.md` model card.
Per-layer sizes live in `config.tracenas` (lists over the kept blocks; dropped blocks are gone and the
remaining ones renumbered, so the KV cache has one entry per kept block). The top-level
`num_attention_heads` / `num_key_value_heads` / `intermediate_size` are the largest per-layer values and
`head_dim` is explicit; docs/export.md describes every field.

Uniform results (every kept block has the same query heads, KV heads and MLP width) get a plain stock
config and load with `trust_remote_code=False`. Non-uniform results also carry `modeling_tracenas.py`
(from `tracenas/models/remote/`, imports nothing from tracenas) and an `auto_map` pointing at it.

Writes are atomic: everything goes to a temporary directory next to the target, which replaces the
target only once complete. A failed export leaves neither a half-written target nor temporary files.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

import torch
from torch import nn

from tracenas.arch import ArchFile, Genome, SearchSpace
from tracenas.export.config import FORMATS, ExportConfig
from tracenas.runtime.config import atomic_write_text
from tracenas.runtime.device import to_torch_dtype
from tracenas.runtime.logs import captured_log, run_log
from tracenas.runtime.errors import RunDirError, TracenasError
from tracenas.prune.masking import LayerSelection, select, selection_from_list, slice_model
from tracenas.models.adapter import ModelAdapter, get_adapter
from tracenas.models.pruned import DEFAULT_MAX_SHARD_SIZE, check_export_target, write_checkpoint, numel
from tracenas.prune.reconstruct import ReconstructSettings, reconstruct_model_
from tracenas.runtime.rundir import RunDirGuard

log = logging.getLogger(__name__)

# --- validation --------------------------------------------------------------------------------------------
def check_selection(adapter: ModelAdapter, selection: list[LayerSelection]) -> None:
    """Raise a one-line `TracenasError` when `selection` cannot describe a pruning of this model."""
    s = adapter.shape()
    if len(selection) != s.num_layers:
        raise TracenasError(f"the selection has {len(selection)} layers but the model has {s.num_layers}")
    if not any(sel.keep for sel in selection):
        raise TracenasError("the selection drops every block")
    for i, sel in enumerate(selection):
        if not sel.keep:
            continue
        where = f"layer {i}"
        if not sel.heads and not sel.channels:
            raise TracenasError(f"{where} is kept with neither attention nor MLP: drop the block instead")
        if sel.heads or sel.kv_heads:  # both empty: the attention sub-block is removed
            _check_indices(sel.heads, s.num_heads, f"{where}: query heads")
            _check_indices(sel.kv_heads, s.num_kv_heads, f"{where}: KV heads")
        if sel.channels:  # empty: the MLP sub-block is removed
            _check_indices(sel.channels, s.intermediate_size, f"{where}: MLP channels")
        if not sel.heads:
            continue
        if s.is_gqa:
            if tuple(sel.kv_heads) != tuple(range(s.num_kv_heads)):
                raise TracenasError(f"{where}: GQA models keep all {s.num_kv_heads} KV heads, got {list(sel.kv_heads)}")
            per_group = [0] * s.num_kv_heads
            for h in sel.heads:
                per_group[h // s.group_size] += 1
            if len(set(per_group)) != 1:
                raise TracenasError(f"{where}: every KV group must keep the same number of query heads, "
                                    f"got {per_group}")
        elif tuple(sorted(sel.kv_heads)) != tuple(sorted(sel.heads)):
            raise TracenasError(f"{where}: with multi-head attention the kept KV heads must equal the query heads")


def _check_indices(idx: tuple[int, ...], n: int, what: str) -> None:
    if not idx:
        raise TracenasError(f"{what}: none kept")
    if len(set(idx)) != len(idx) or min(idx) < 0 or max(idx) >= n:
        raise TracenasError(f"{what}: indices must be distinct and in [0, {n}), got {list(idx)[:8]}...")


def check_layers(layers: list[dict], selection: list[LayerSelection]) -> None:
    """The stored selection must realize the per-layer sizes stored next to it (arch.json "layers")."""
    if len(layers) != len(selection):
        raise TracenasError(f"'layers' has {len(layers)} entries but 'selection' has {len(selection)}")
    for i, (la, sel) in enumerate(zip(layers, selection)):
        try:
            want = (bool(la["keep"]), int(la["num_heads"]), int(la["num_kv_heads"]), int(la["mlp_width"]))
        except (KeyError, TypeError, ValueError) as err:
            raise RunDirError(f"arch.json is corrupt: malformed 'layers' entry {i} ({err})") from err
        if want[0] != sel.keep:
            raise TracenasError(f"layer {i}: the architecture {'keeps' if want[0] else 'drops'} the block "
                                "but the selection does not")
        have = (len(sel.heads), len(sel.kv_heads), len(sel.channels))
        if want[0] and want[1:] != have:
            raise TracenasError(f"layer {i}: the architecture has {want[1]} heads / {want[2]} KV heads / "
                                f"{want[3]} channels but the selection keeps {have[0]} / {have[1]} / {have[2]}")


def check_genome(space: SearchSpace, genome: Genome, selection: list[LayerSelection]) -> None:
    """The stored selection must realize the stored genome on this model (default grid)."""
    space.validate(genome)
    check_layers([la.to_dict() for la in space.layer_arch(genome)], selection)


def export_pruned(model: nn.Module, tokenizer, selection: list[LayerSelection], out_dir: str | os.PathLike, *,
                  dtype: str | torch.dtype = "float32", card: dict | None = None,
                  max_shard_size: int = DEFAULT_MAX_SHARD_SIZE, extra_files: dict[str, str] | None = None) -> Path:
    """Slice `model` to `selection` and write the checkpoint to `out_dir` (atomically). Returns the path.

    `model` is not modified. `card` entries (e.g. score, proxy, budget, source_model) go to README.md.
    """
    adapter = get_adapter(model)
    check_selection(adapter, selection)
    torch_dtype = to_torch_dtype(dtype)
    target = Path(out_dir).expanduser().absolute()
    check_export_target(target)
    small = slice_model(model, adapter, selection).eval()
    return write_checkpoint(small, tokenizer, target, torch_dtype, card, numel(model), max_shard_size, extra_files)


# --- run directories ---------------------------------------------------------------------------------------
def is_done(run_dir: str | os.PathLike, cfg: ExportConfig | None = None) -> bool:
    """Whether the export is complete: its checkpoint (`RUN_DIR/model`, or `cfg.out`) holds a config."""
    target = Path(cfg.out) if cfg is not None and cfg.out else Path(run_dir) / "model"
    return (target / "config.json").is_file()


def run(cfg: ExportConfig) -> Path:
    """The stage contract's entry point (`tracenas run`): `export_run` without an `export.yaml` of its own (the
    run directory's `run.yaml` records the export's settings)."""
    return export_run(cfg, record=False)


def export_run(cfg: ExportConfig, *, record: bool = True) -> Path:
    """Export the architecture in `cfg.run_dir`/arch.json (or `cfg.arch`) to `RUN_DIR/model` (or `cfg.out`).

    `cfg.format`: `hf` (the checkpoint directory), `gguf` (one llama.cpp file, `RUN_DIR/model.gguf` or an `out`
    ending in .gguf; see tracenas.export.gguf.writer) or `both` (the directory and the file next to it). Returns
    the checkpoint directory, or the GGUF file for `gguf`. `RUN_DIR` may also be a checkpoint directory itself (an
    export or a recovered model, `RUN/recover/model`): with `gguf` it is converted as it is.
    With `record`, the resolved settings are written as `export.yaml`: in RUN_DIR for the default output, else
    inside the exported directory, so an export never writes into RUN_DIR when given `out`.
    `cfg.reconstruct` re-solves the kept weights on calibration text first (see `tracenas.prune.reconstruct`);
    the checkpoint then also holds `reconstruction.json` (per-layer output errors before and after).
    """
    run_dir, out = Path(cfg.run_dir), cfg.out
    reconstruction = cfg.reconstruction()  # bad options fail before anything is read
    if (run_dir / "config.json").is_file() and not (run_dir / "arch.json").is_file() and cfg.arch is None:
        if cfg.format != "gguf":
            raise TracenasError(f"{run_dir} is a model checkpoint, not a run directory: it can only be converted "
                                "with --format gguf")
        from tracenas.export.gguf.writer import export_checkpoint

        return export_checkpoint(run_dir, out, qtype=cfg.gguf_type)
    job = _ExportJob(cfg, reconstruction, dataclasses.asdict(cfg) if record else None)
    if out is None:  # RUN_DIR/export.log
        if not run_dir.is_dir():
            raise RunDirError(f"no such run directory: {run_dir}")
        # RunDirGuard: a failed export leaves no new export.log behind
        with RunDirGuard(run_dir), run_log(run_dir, "export"):
            return job.run(None)
    if cfg.format == "gguf" and Path(out).suffix != ".gguf":
        raise TracenasError(f"--out for --format gguf names the .gguf file to write, got {out}")
    with captured_log() as lines:  # written into OUT with the model: nothing goes into RUN_DIR
        return job.run(lines)


def read_candidate(run_dir: Path, index: int) -> dict:
    """Record `index` of RUN_DIR/history.jsonl (any scored candidate, not only the best), one-line errors."""
    path = run_dir / "history.jsonl"
    if not path.is_file():
        raise RunDirError(f"no history.jsonl in {run_dir}: --candidate needs a search's run directory")
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not 0 <= index < len(records) or records[index].get("index") != index:
        raise RunDirError(f"no candidate {index} in {path}: it holds candidates 0 to {len(records) - 1}")
    return records[index]


class _ExportJob:
    """One export, step by step: read the architecture, load the base model, choose what is kept, check it against
    the model, re-solve, write (GGUF and/or checkpoint, and `export.yaml`)."""

    def __init__(self, cfg: ExportConfig, reconstruction: ReconstructSettings | None, settings: dict | None):
        self.cfg, self.reconstruction, self.settings = cfg, reconstruction, settings
        self.run_dir = Path(cfg.run_dir)

    def run(self, lines) -> Path:
        cfg = self.cfg
        if not self.run_dir.is_dir() and (cfg.arch is None or cfg.out is None):
            raise RunDirError(f"no such run directory: {self.run_dir}")
        self._read_arch()
        to_torch_dtype(cfg.dtype)
        default = "model" if cfg.candidate is None else f"model-candidate-{cfg.candidate}"
        self.target = Path(cfg.out) if cfg.out is not None else self.run_dir / default
        if cfg.format != "gguf":
            check_export_target(self.target.expanduser().absolute())
        self._load_model()
        self._choose_selection()
        self._check_against_model()
        self.tokenizer = _load_tokenizer(self.source)
        files: dict[str, str] = {}
        if self.reconstruction is not None:
            rec = reconstruct_model_(self.model, self.adapter, self.selection, self.tokenizer, self.reconstruction)
            self.selection = rec.selection
            files["reconstruction.json"] = json.dumps(reconstruction_record(rec, self.reconstruction), indent=2) + "\n"
        if cfg.format in ("gguf", "both"):
            gguf_file = self._write_gguf()
            if cfg.format == "gguf":
                if self.settings is not None and cfg.out is None:
                    atomic_write_text(self.run_dir / "export.yaml", self._record(gguf_file))
                return gguf_file
        return self._write_checkpoint(files, lines)

    def _read_arch(self) -> None:
        self.arch_file = ArchFile.read(self.cfg.arch or self.run_dir / "arch.json")
        self.arch = self.arch_file.to_dict()
        try:
            self.genome = Genome.from_dict(self.arch["genome"])
            self.selection = selection_from_list(self.arch["selection"])
        except (KeyError, TypeError, ValueError, TracenasError) as err:
            raise RunDirError(f"arch.json is corrupt: malformed genome or selection ({err})") from err
        self.chosen = None
        if self.cfg.candidate is not None:  # a scored candidate of the history instead of the best
            self.chosen = read_candidate(self.run_dir, self.cfg.candidate)
            self.genome = Genome.from_dict(self.chosen["genome"])

    def _load_model(self) -> None:
        from tracenas.models.loading import load_model

        spec = self.cfg.model or self.arch_file.source_spec()
        log.info("loading base model %s", spec or "(default)")
        tie = bool(self.arch_file.model.get("tie_embeddings"))  # as the search loaded it
        self.model, _, self.source = load_model(spec, dtype=torch.float32, device="cpu", with_tokenizer=False,
                                                tie_embeddings=tie)
        self.adapter = get_adapter(self.model)
        self.space = SearchSpace(self.adapter.shape(), min_layers=1)

    def _choose_selection(self) -> None:
        """What each kept block keeps: the best's recorded selection, a history candidate's selection re-derived
        from the search's importance anchor, or a level-based architecture's database levels."""
        if self.chosen is not None and self.chosen.get("levels") is None:
            from tracenas.prune.anchor import ANCHOR, load_anchor

            if not (self.run_dir / ANCHOR).is_file():
                raise RunDirError(f"no {ANCHOR} in {self.run_dir}: --candidate needs the search's saved importance")
            self.selection = select(self.space, self.genome, load_anchor(self.run_dir / ANCHOR)[0])
            self.arch = {**self.arch, "layers": None, "score": self.chosen.get("score"), "memory_bytes": None,
                         "flops_per_token": None}
        levels = (self.chosen or self.arch).get("levels")
        if levels is not None:  # a darwinlm architecture: the database's kept units and re-solved weights
            self.selection = _apply_levels(self.run_dir, self.arch, levels, self.model, self.adapter,
                                           self.reconstruction)
            self.arch = {**self.arch, "layers": None}

    def _check_against_model(self) -> None:
        genome, space, arch = self.genome, self.space, self.arch
        try:
            if genome.num_layers != space.shape.num_layers:
                raise TracenasError(f"the genome has {genome.num_layers} layers but the model has "
                                    f"{space.shape.num_layers}")
            check_selection(self.adapter, self.selection)
            if isinstance(arch.get("layers"), list):
                check_layers(arch["layers"], self.selection)
            else:
                check_genome(space, genome, self.selection)
        except RunDirError:
            raise
        except TracenasError as err:
            raise TracenasError(f"arch.json does not match model {self.source.spec}: {err}") from err
        base = arch.get("base_params")
        if base is not None and int(base) != space.base_params():
            raise TracenasError(f"arch.json was searched on a model with {int(base):,} parameters but "
                                f"{self.source.spec} has {space.base_params():,}; pass the same --model as the search")

    def _write_gguf(self) -> Path:
        from tracenas.export.gguf.writer import check_expressible, gguf_path, write_gguf

        check_expressible(self.model)  # before any slicing or writing: one line, nothing written
        small = slice_model(self.model, self.adapter, self.selection).eval()
        source = self.source
        return write_gguf(small, gguf_path(self.target.expanduser().absolute()), qtype=self.cfg.gguf_type,
                          source_gguf=Path(source.path) / source.gguf_file if source.gguf_file else None,
                          hf_tokenizer=self.tokenizer, name=f"{self.run_dir.absolute().name} (tracenas)")

    def _record(self, output: Path) -> str:
        import yaml

        return yaml.safe_dump(dict(self.settings, output=str(output)), sort_keys=False)

    def _card(self) -> dict:
        from tracenas.models.loading import public_source

        arch, genome, public = self.arch, self.genome, public_source(self.source)
        return {"source_model": public.name, "base_model": public.base_model, "license": public.license,
                "proxy": arch.get("proxy"), "strategy": arch.get("strategy"), "budget": arch.get("budget"),
                "budget unit": (arch.get("budget_metric") or {}).get("kind", "params"),
                "serving memory (bytes)": arch.get("memory_bytes"), "FLOPs per token": arch.get("flops_per_token"),
                "score": arch.get("score"), "candidate": self.cfg.candidate,
                "layers kept": f"{sum(genome.keep)} / {genome.num_layers}",
                "weight reconstruction": self.reconstruction.describe() if self.reconstruction is not None else None,
                "run directory": self.run_dir.absolute().name}

    def _write_checkpoint(self, files: dict[str, str], lines) -> Path:
        cfg = self.cfg
        record = self._record(self.target) if self.settings is not None else None
        inside = dict(files)
        if cfg.out is not None:
            inside |= {"export.log": lines.getvalue()} | ({"export.yaml": record} if record is not None else {})
        path = export_pruned(self.model, self.tokenizer, self.selection, self.target, dtype=cfg.dtype,
                             card=self._card(), extra_files=inside)
        if record is not None and cfg.out is None:
            atomic_write_text(self.run_dir / "export.yaml", record)
        return path


def _apply_levels(run_dir: Path, arch: dict, levels: dict, model: nn.Module, adapter: ModelAdapter,
                  reconstruction: ReconstructSettings | None) -> list[LayerSelection]:
    """Move `model` to the database levels of a darwinlm architecture (pruned weights zero, consumers re-solved)
    and return the matching selection, which slicing then keeps."""
    from tracenas.arch import Levels
    from tracenas.prune.database import LevelAssembler, SparsityDatabase

    if reconstruction is not None:
        raise TracenasError("this architecture's weights come from its sparsity-level database (already "
                            "reconstructed): leave --reconstruct out")
    if not arch.get("database"):
        raise RunDirError("arch.json has levels but names no database")
    path = Path(arch["database"]).expanduser()
    path = path if path.is_absolute() else run_dir / path  # relative: inside the search's run directory
    db = SparsityDatabase.open(path)
    assembler = LevelAssembler(model, adapter, db)
    try:
        assembler.apply(Levels.from_dict(levels))
    except (KeyError, TypeError, ValueError) as err:
        raise RunDirError(f"arch.json is corrupt: malformed levels ({err})") from err
    log.info("weights of levels from the database in %s", path)
    return assembler.selection()


def reconstruction_record(rec, settings: ReconstructSettings) -> dict:
    """`reconstruction.json`: the settings, and each kept consumer's relative output error on the calibration
    tokens with the mask alone and after re-solving."""
    return {"settings": dataclasses.asdict(settings), "calibration_tokens": rec.tokens, "mean": rec.summary(),
            "layers": {str(i): e for i, e in sorted(rec.errors.items())}}


def _load_tokenizer(source):
    from tracenas.models.loading import load_tokenizer

    try:
        return load_tokenizer(source)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as err:
        log.warning("no tokenizer found with %s (%s); exporting without tokenizer files", source.spec,
                    str(err).splitlines()[0] if str(err) else type(err).__name__)
        return None


__all__ = ["FORMATS", "ExportConfig", "is_done", "read_candidate", "check_genome", "check_layers", "check_selection",
           "export_pruned", "export_run", "run"]
