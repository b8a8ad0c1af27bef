"""`tracenas export RUN_DIR`: write the searched architecture as a loadable checkpoint (RUN_DIR/model)."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from tracenas.runtime.config import add_config_arguments, config_from_args, opt, to_dict

NAME = "export"
HELP = "export a search run's architecture (arch.json) as a Hugging Face checkpoint and/or a GGUF file"


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
                            "directory and the .gguf next to it", choices=["hf", "gguf", "both"])
    gguf_type: str = opt("f16", "weight type of the GGUF file (norms and biases stay f32)",
                         choices=["f32", "f16", "bf16", "q8_0"])
    candidate: int | None = opt(None, "export this scored candidate of RUN_DIR/history.jsonl (its `index`) instead of "
                                      "the best, to RUN_DIR/model-candidate-N unless --out is given")
    reconstruct: str | None = opt(None, "re-solve the kept o_proj / down_proj weights by least squares on calibration "
                                        "text so each block matches the dense one, on `dense` inputs (each block fed by the dense "
                                        "blocks above it) or `sequential` ones (fed by the already-pruned blocks above "
                                        "it); docs/reconstruction.md",
                                  choices=["dense", "sequential"])
    importance: str = opt("wanda", "which heads / channels to keep: `wanda` (activation-weighted magnitude, as the "
                                   "search scored them) or `obs` (greedy OBS removal; needs --reconstruct)",
                          choices=["wanda", "obs"])
    damp: float = opt(0.01, "reconstruction ridge: this fraction of the mean Gram diagonal")
    obs_chunk: int = opt(32, "--importance obs: MLP channels removed per greedy step (1: strictly one at a time)")
    calib_sequences: int = opt(16, "reconstruction calibration windows")
    calib_seq_len: int = opt(512, "tokens per reconstruction calibration window")
    data: str | None = opt(None, "text for the reconstruction calibration split (default: embedded Wikipedia)")
    threads: int | None = opt(None, "CPU threads for torch (default: torch's choice)")

    def reconstruction(self):
        """The `ReconstructSettings` these options ask for (None without --reconstruct)."""
        from tracenas.runtime.errors import TracenasError
        from tracenas.prune.reconstruct import ReconstructSettings

        if self.reconstruct is None:
            if self.importance != "wanda":
                raise TracenasError("--importance obs chooses what to keep by reconstruction error: add --reconstruct")
            return None
        return ReconstructSettings(inputs=self.reconstruct, importance=self.importance, damp=self.damp,
                                   sequences=self.calib_sequences, seq_len=self.calib_seq_len, data=self.data,
                                   obs_chunk=self.obs_chunk)


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="run directory (holds arch.json)")
    add_config_arguments(parser, ExportConfig)


def run(args: argparse.Namespace) -> int:
    from tracenas.export.checkpoint import export_run

    from tracenas.runtime.device import using_threads

    cfg = config_from_args(ExportConfig, args)
    with using_threads(cfg.threads):
        path = export_run(cfg.run_dir, model_spec=cfg.model, arch_path=cfg.arch, out=cfg.out, dtype=cfg.dtype,
                          settings=to_dict(cfg), candidate=cfg.candidate, reconstruction=cfg.reconstruction(),
                          fmt=cfg.format, gguf_type=cfg.gguf_type)
    if path.suffix == ".gguf":
        _print_gguf(path)
        return 0
    fields = json.loads((path / "config.json").read_text()).get("tracenas", {})
    params, base = fields.get("params"), fields.get("base_params")
    print(f"exported {path}")
    if params and base:
        print(f"  parameters: {params:,} of {base:,} ({params / base:.1%}), "
              f"{len(fields['source_layers'])} of {fields['base_num_hidden_layers']} blocks")
    remote = not fields.get("uniform", True)
    print(f"  load: tracenas.export.checkpoint.load_pruned({str(path)!r})")
    print(f"     or AutoModelForCausalLM.from_pretrained({str(path)!r}"
          f"{', trust_remote_code=True' if remote else ''})")
    print(f"  config: {(path if cfg.out else Path(cfg.run_dir)) / 'export.yaml'}")
    if cfg.format == "both":
        from tracenas.export.gguf.writer import gguf_path

        _print_gguf(gguf_path(path))
    return 0


def _print_gguf(path: Path) -> None:
    print(f"exported {path} ({path.stat().st_size / 1e6:.1f} MB)")
    print(f"  run: llama-cli -m {str(path)!r} -p 'Hello'   (Ollama: FROM {path} in a Modelfile; see docs/gguf.md)")
