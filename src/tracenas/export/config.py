"""`ExportConfig`: the export stage's settings (`tracenas export`, and the `export:` section of `tracenas run`), and
the one place that turns them into reconstruction settings. Torch-free, so `--help` stays fast."""

from __future__ import annotations

from dataclasses import dataclass

from tracenas.runtime.config import opt
from tracenas.runtime.errors import TracenasError

FORMATS = ("hf", "gguf", "both")


@dataclass
class ExportConfig:
    """Settings of `tracenas export`."""

    run_dir: str = opt("", "run directory written by `tracenas search`", cli=False)
    arch: str | None = opt(None, "arch.json to export (default: RUN_DIR/arch.json)")
    model: str | None = opt(None, "base model: Hub id, directory or .gguf (default: the one recorded in arch.json)")
    out: str | None = opt(None, "output directory (default: RUN_DIR/model); an earlier export there is replaced "
                               "atomically, any other non-empty directory is refused")
    dtype: str = opt("float32", "dtype of the saved weights", choices=["float32", "bfloat16", "float16"])
    format: str = opt("hf", "hf: the checkpoint directory; gguf: one .gguf file for llama.cpp / Ollama (RUN_DIR/model.gguf, "
                            "or --out x.gguf; RUN_DIR may also be a checkpoint such as RUN/recover/model); both: the "
                            "directory and the .gguf next to it", choices=list(FORMATS))
    gguf_type: str = opt("f16", "weight type of the GGUF file (norms and biases stay f32)",
                         choices=["f32", "f16", "bf16", "q8_0"])
    candidate: int | None = opt(None, "export this scored candidate of RUN_DIR/history.jsonl (its `index`) instead of "
                                      "the best, to RUN_DIR/model-candidate-N unless --out is given")
    reconstruct: str | None = opt(None, "re-solve the kept o_proj / down_proj weights by least squares on calibration "
                                        "text so each block matches the dense one, on `dense` inputs (each block fed by "
                                        "the dense blocks above it) or `sequential` ones (fed by the already-pruned "
                                        "blocks above it); none: cut only (docs/reconstruction.md)",
                                  choices=["dense", "sequential", "none"])
    importance: str | None = opt(None, "which heads / channels to keep: `wanda` (activation-weighted magnitude, as the "
                                       "search scored them; the default without --reconstruct) or `obs` (greedy OBS "
                                       "removal; the default with --reconstruct)",
                                 choices=["wanda", "obs"])
    damp: float = opt(0.01, "reconstruction ridge: this fraction of the mean Gram diagonal")
    obs_chunk: int = opt(32, "--importance obs: MLP channels removed per greedy step (1: strictly one at a time)")
    calib_sequences: int = opt(16, "reconstruction calibration windows")
    calib_seq_len: int = opt(512, "tokens per reconstruction calibration window")
    data: str | None = opt(None, "text for the reconstruction calibration split (default: embedded Wikipedia)")
    threads: int | None = opt(None, "CPU threads for torch (default: torch's choice)")

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise TracenasError(f"unknown export format {self.format!r}; choose from {', '.join(FORMATS)}")

    @property
    def reconstructs(self) -> bool:
        return self.reconstruct not in (None, "none")

    def reconstruction(self):
        """The `ReconstructSettings` these options ask for (None: cut only). The one place that builds them, for
        `tracenas export` and `tracenas run` alike."""
        from tracenas.prune.reconstruct import ReconstructSettings

        if not self.reconstructs:
            if self.importance == "obs":
                raise TracenasError("--importance obs chooses what to keep by reconstruction error: it needs "
                                    "--reconstruct dense or sequential")
            return None
        return ReconstructSettings(inputs=self.reconstruct, importance=self.importance or "obs", damp=self.damp,
                                   sequences=self.calib_sequences, seq_len=self.calib_seq_len, data=self.data,
                                   obs_chunk=self.obs_chunk)
