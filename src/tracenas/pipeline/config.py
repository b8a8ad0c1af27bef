"""`RunConfig`: the settings of `tracenas run`. The run's own options (where, which model and data, which stages,
seed, device) plus one section per stage, each the stage's own config dataclass (`search:`, `export:`, `recover:`,
`eval:`, `bench:` in run.yaml), so no stage option is declared twice.

On the command line the options most worth overriding stay flat flags (`--budget`, `--recover-tokens`,
`--reconstruct`, ...; `FLAGS` maps each to its section and field); every other stage option is set in a
`--config` YAML section. A flat YAML (flag names as keys, the run.yaml of earlier versions) is read too.

    cfg = RunConfig.from_flags(budget="0.6", recover_tokens="200k", out="runs/demo")
    cfg.search.budget, cfg.recover.tokens          # '0.6', '200k'

Torch-free: `tracenas run --help` builds its parser from here.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from tracenas.bench.config import BenchConfig
from tracenas.eval.config import EvalConfig
from tracenas.export.config import ExportConfig
from tracenas.recover.config import RecoverConfig
from tracenas.runtime.config import add_arguments, field_argument, load_yaml, opt
from tracenas.runtime.errors import TracenasError
from tracenas.search.config import SearchConfig

STAGES = ("search", "export", "recover", "eval", "bench")
SECTIONS = {"search": SearchConfig, "export": ExportConfig, "recover": RecoverConfig, "eval": EvalConfig,
            "bench": BenchConfig}
# The run's own options that every stage reads: the run copies them into each section it hands to a stage.
SHARED = ("model", "data", "preset", "seed", "device")
_SEARCH_FLAGS = ("budget", "tie_embeddings", "budget_memory", "budget_flops", "budget_dtype", "budget_context",
                 "budget_batch", "strategy", "proxy", "population", "elites", "iterations", "num_sequences", "seq_len",
                 "offspring", "survivors", "stage_tokens", "finetune_tokens", "finetune_lr", "database", "rounds",
                 "database_sequences", "database_seq_len", "fitness", "supernet_inputs", "rank", "min_layers",
                 "budget_tolerance")
# flat flag -> (section, field of that section's config)
FLAGS: dict[str, tuple[str, str]] = {
    **{name: ("search", name) for name in _SEARCH_FLAGS},
    "reconstruct": ("export", "reconstruct"),
    "importance": ("export", "importance"),
    "recover_tokens": ("recover", "tokens"),
    "recover_seq_len": ("recover", "seq_len"),
    "recover_lr": ("recover", "lr"),
    "recover_dtype": ("recover", "dtype"),
    "distill": ("recover", "distill"),
    "tasks": ("eval", "tasks"),
    "ppl_max_tokens": ("eval", "ppl_max_tokens"),
    "bench_prompt_len": ("bench", "prompt_len"),
    "bench_gen_len": ("bench", "gen_len"),
    "bench_trials": ("bench", "trials"),
}


def _section(cls: type, **defaults: Any):
    """A stage section with the run's defaults where they differ from the stage's own."""
    return field(default_factory=lambda: cls(**defaults), metadata={"section": True})


@dataclass
class RunConfig:
    """Settings of `tracenas run`."""

    out: str = opt("runs/run", "run directory for every stage's outputs and report.md")
    threads: int | None = opt(None, "CPU threads for torch (default: torch's choice, one per core)")
    model: str | None = opt(None, "HF id, local directory or .gguf; empty = embedded SmolLM2-135M")
    data: str | None = opt(None, "text for calibration, training and evaluation (disjoint splits); empty = embedded "
                                 "Wikipedia")
    preset: str = opt("quick", "quick (CPU) or paper settings for every stage", choices=("quick", "paper"))
    stages: str = opt(",".join(STAGES), "comma-separated stages to run, in pipeline order")
    seed: int = opt(0, "seed of every stage")
    device: str = opt("auto", "auto, cpu, cuda, ...")
    gguf: str | None = opt(None, "also write the final model (recovered, else pruned) as one GGUF file for llama.cpp / "
                                 "Ollama with this weight type, next to its directory (RUN/recover/model.gguf)",
                           choices=("f32", "f16", "bf16", "q8_0"))
    eval_base: bool = opt(True, "also evaluate the unpruned base model (for the report)")
    search: SearchConfig = _section(SearchConfig)
    # the export re-solves the kept weights by default (docs/reconstruction.md); `tracenas export` cuts only
    export: ExportConfig = _section(ExportConfig, reconstruct="dense")
    # recovery distils from the base model by default (docs/recovery.md); `tracenas recover` does not
    recover: RecoverConfig = _section(RecoverConfig, distill=True)
    eval: EvalConfig = _section(EvalConfig)
    bench: BenchConfig = _section(BenchConfig)

    def stage_list(self) -> list[str]:
        stages = [s.strip() for s in self.stages.split(",") if s.strip()]
        bad = [s for s in stages if s not in STAGES]
        if bad:
            raise TracenasError(f"unknown stage(s) {', '.join(bad)}; choose from {', '.join(STAGES)}")
        return stages

    @classmethod
    def from_flags(cls, **values: Any) -> RunConfig:
        """A RunConfig from the run's own options, flat flags (`budget=`, `recover_tokens=`, ...) and sections
        (`search={...}` or a `SearchConfig`), over the defaults."""
        return from_values(values)


def _own_fields() -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(RunConfig) if not f.metadata.get("section")]


def _sections_default() -> dict[str, Any]:
    default = RunConfig()
    return {name: getattr(default, name) for name in SECTIONS}


def from_values(values: dict[str, Any]) -> RunConfig:
    """Defaults < sections given as mappings or configs < flat flags; one line for any unknown key."""
    own = {f.name for f in _own_fields()}
    sections: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    top: dict[str, Any] = {}
    unknown = []
    for key, value in values.items():
        if key in SECTIONS:
            if dataclasses.is_dataclass(value):
                value = dataclasses.asdict(value)
            if not isinstance(value, dict):
                raise TracenasError(f"run config section {key!r} must be a mapping of option: value")
            sections[key].update({str(k).replace("-", "_"): v for k, v in value.items()})
        elif key in own:
            top[key] = value
        elif key in FLAGS:
            section, name = FLAGS[key]
            sections[section][name] = value
        else:
            unknown.append(str(key))
    if unknown:
        raise TracenasError(f"unknown config keys for RunConfig: {', '.join(sorted(unknown))}")
    built = {}
    for name, base in _sections_default().items():
        cls = SECTIONS[name]
        names = {f.name for f in dataclasses.fields(cls)}
        bad = set(sections[name]) - names
        if bad:
            raise TracenasError(f"unknown config keys for the {name} section: {', '.join(sorted(bad))}")
        built[name] = dataclasses.replace(base, **sections[name])
    return RunConfig(**top, **built)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """`--config YAML`, the run's own options and the flat stage flags (each with its stage field's help and the
    run's default)."""
    parser.add_argument("--config", metavar="YAML", help="read options from a YAML file: the run's options, flat "
                                                         "flags, or sections search: / export: / recover: / eval: / "
                                                         "bench: with any option of that stage (flags override it)")
    add_arguments(parser, RunConfig, skip=tuple(SECTIONS))
    defaults = _sections_default()
    for flag, (section, name) in FLAGS.items():
        cls = SECTIONS[section]
        f = next(x for x in dataclasses.fields(cls) if x.name == name)
        hint = typing.get_type_hints(cls)[name]
        field_argument(parser, flag, f, hint, getattr(defaults[section], name), prefix=f"{section}: ")


def run_config_from_args(args: argparse.Namespace) -> RunConfig:
    """RunConfig from defaults < the `--config` YAML < explicit flags."""
    values = load_yaml(getattr(args, "config", None))
    names = {f.name for f in _own_fields()} | set(FLAGS)
    values.update({k: v for k, v in vars(args).items() if k in names})
    return from_values(values)
