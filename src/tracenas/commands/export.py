"""`tracenas export RUN_DIR`: write the searched architecture as a loadable checkpoint (RUN_DIR/model)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tracenas.export.config import ExportConfig
from tracenas.runtime.config import add_config_arguments, config_from_args

NAME = "export"
HELP = "export a search run's architecture (arch.json) as a Hugging Face checkpoint and/or a GGUF file"


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="run directory (holds arch.json)")
    add_config_arguments(parser, ExportConfig)


def run(args: argparse.Namespace) -> int:
    from tracenas.export.checkpoint import export_run

    from tracenas.runtime.device import using_threads

    cfg = config_from_args(ExportConfig, args)
    with using_threads(cfg.threads):
        path = export_run(cfg)
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
    print(f"  load: tracenas.load_pruned({str(path)!r})")
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
