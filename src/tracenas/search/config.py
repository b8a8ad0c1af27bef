"""`SearchConfig`: every knob of `tracenas search`, with the `paper` and `quick` presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from tracenas.budget import BudgetMetric
from tracenas.runtime.config import normalize_memory_budget, opt, parse_budget_spec
from tracenas.runtime.errors import TracenasError
from tracenas.proxies.registry import get_proxy, proxy_names
from tracenas.search.registry import strategy_class, strategy_help, strategy_names, strategy_presets

PRESETS: dict[str, dict] = {
    # Paper Table 5 / Sec. 4.1: 16 x 4096 calibration tokens, population 30, 10 elites, 50 iterations.
    "paper": dict(num_sequences=16, seq_len=4096, population=30, elites=10, iterations=50, rank=64,
                  micro_batch=4, proxy="phi"),
    # CPU-sized: the default model finishes in well under 10 minutes on 2 cores. Scored by KL to the base model:
    # on small models with short recovery it ranks candidates better than Φ and finds better models end to end
    # (docs/proxy-validation.md, "End to end").
    "quick": dict(num_sequences=4, seq_len=256, population=8, elites=3, iterations=6, rank=64, micro_batch=4,
                  proxy="kl"),
}

# What `--strategy darwinlm` / `tyr` add to a preset (`tracenas.search.registry.STRATEGY_PRESETS`), for the help texts.
DARWINLM_PRESETS = strategy_presets("darwinlm")
TYR_PRESETS = strategy_presets("tyr")


def int_list(text: object) -> tuple[int, ...]:
    """Comma-separated integers, as the stage options take them ("8,4,2,1"; "1e4" is 10000)."""
    return tuple(int(float(x)) for x in str(text).split(",") if x.strip())


def _tyr(key: str) -> str:
    return ", ".join(f"{name} {values[key]}" for name, values in TYR_PRESETS.items())


def preset_help(key: str, text: str, presets: dict[str, dict] | None = None) -> str:
    """`text (preset: paper 30, quick 8)`: what each preset (the search's by default) sets when the flag is left out."""
    presets = PRESETS if presets is None else presets
    return f"{text} (preset: " + ", ".join(f"{name} {values[key]:,}" if isinstance(values[key], int) else
                                            f"{name} {values[key]}" for name, values in presets.items()) + ")"


@dataclass
class SearchConfig:
    model: str | None = opt(None, "HF model id, local model directory or .gguf file; empty = embedded SmolLM2-135M")
    data: str | None = opt(None, "calibration text: empty = embedded Wikipedia; .txt/.jsonl/.parquet path or HF id")
    out: str = opt("runs/search", "run directory (created); holds arch.json, history.jsonl, search/state.json")
    budget: str = opt("0.6", "parameter budget: a count (81M, 2.7B) or a fraction of the base model (0.6)")
    preset: str = opt("quick", "settings bundle; explicit flags override it", choices=tuple(PRESETS))
    # like --proxy: read from the registry when the parser is built, so registered strategies are listed too
    strategy: str = opt("evolution", lambda: "search strategy: " + strategy_help(), choices=strategy_names)
    # help and choices are read when the parser is built, so proxies registered later are listed too
    proxy: str | None = opt(None, lambda: "candidate score (preset: kl for quick, phi for paper): "
                            + ", ".join(proxy_names()), choices=proxy_names)
    num_sequences: int | None = opt(None, preset_help("num_sequences", "calibration sequences"))
    seq_len: int | None = opt(None, preset_help("seq_len", "tokens per calibration sequence"))
    rank: int | None = opt(None, preset_help("rank", "LoRA probe rank r of the gradient traces"))
    population: int | None = opt(None, preset_help("population", "candidates per generation"))
    elites: int | None = opt(None, preset_help("elites", "elites carried to the next generation"))
    iterations: int | None = opt(None, preset_help("iterations", "generations, the initial one included"))
    micro_batch: int | None = opt(None, preset_help("micro_batch", "sequences per forward/backward pass (memory vs speed)"))
    crossover: float = opt(0.7, "probability that a child is a crossover of two elites")
    mutation_depth: float = opt(0.2, "probability per child of flipping one block's keep bit")
    mutation_width: float = opt(0.2, "probability per ratio of a multiplicative Gaussian jitter")
    jitter_sigma: float = opt(0.25, "std of the log-normal width jitter")
    prior_powers: str = opt("0,0.5,1", "generation-0 anchors: widths proportional to (layer importance)^p for each p")
    init_depth_flips: int = opt(3, "generation-0 children drop up to this many random blocks")
    min_layers: int | None = opt(None, "minimum kept blocks L_min (default: half of the base model's blocks)")
    budget_tolerance: float = opt(0.02, "candidates must land in [C*(1-tol), C] parameters")
    budget_memory: str | None = opt(None, "budget in serving memory instead of parameters: weights at --budget-dtype + the "
                                          "KV cache of --budget-batch x --budget-context tokens (300MB, 1.5GiB, or 0.6 "
                                          "of the base model's)")
    budget_flops: str | None = opt(None, "budget in FLOPs per generated token at --budget-context instead of parameters "
                                         "(a count like 150M, or 0.6 of the base model's)")
    budget_dtype: str = opt("bfloat16", "bytes per value for --budget-memory", choices=("float32", "bfloat16", "float16"))
    budget_context: int = opt(4096, "context length (tokens) for --budget-memory's KV cache and --budget-flops")
    budget_batch: int = opt(1, "sequences in the KV cache for --budget-memory")
    offspring: int | None = opt(None, preset_help("offspring", "darwinlm / tyr: children per generation (λ)",
                                                  DARWINLM_PRESETS) + "; tyr: " + _tyr("offspring"))
    survivors: str | None = opt(None, preset_help("survivors", "darwinlm / tyr: survivors after each selection stage, "
                                                  "comma-separated (darwinlm: ending in 1)", DARWINLM_PRESETS)
                                + "; tyr: " + _tyr("survivors"))
    stage_tokens: str | None = opt(None, preset_help("stage_tokens", "darwinlm / tyr: tokens each stage scores a "
                                                     "candidate on (KL to the dense model)", DARWINLM_PRESETS)
                                   + "; tyr: " + _tyr("stage_tokens"))
    finetune_tokens: str | None = opt(None, preset_help("finetune_tokens", "darwinlm: tokens each stage fine-tunes "
                                                        "a candidate on before scoring it (0: none)", DARWINLM_PRESETS))
    finetune_lr: float | None = opt(None, preset_help("finetune_lr", "darwinlm: AdamW learning rate of the "
                                                      "in-memory fine-tuning", DARWINLM_PRESETS))
    rounds: int | None = opt(None, preset_help("rounds", "tyr: prune-and-search rounds (the level step halves each "
                                               "round)", TYR_PRESETS))
    supernet_levels: int | None = opt(None, preset_help("supernet_levels", "tyr: sizes per sub-block in a round's "
                                                        "supernet (K, odd)", TYR_PRESETS))
    level_step: float | None = opt(None, preset_help("level_step", "tyr: round 0's step between levels, as a "
                                                     "fraction of the sub-block", TYR_PRESETS))
    supernet_inputs: str = opt("expected", "tyr: what each block's supernet levels are calibrated on: the blocks above "
                                           "at their expected levels (density-weighted, or every level alike), or "
                                           "the dense model (docs/tyr.md)",
                               choices=("expected", "expected-uniform", "dense"))
    fitness: str = opt("kl", "tyr: exact KL to the dense model, or the official top-k sparse KL",
                       choices=("kl", "sparse_kl"))
    topk: int = opt(8192, "tyr: tokens kept by --fitness sparse_kl")
    database: str | None = opt(None, "darwinlm: sparsity-level database (`tracenas database build`); default: built "
                                     "in OUT/database on the calibration windows")
    database_levels: int = opt(11, "darwinlm: MLP levels of a database built in OUT/database")
    database_sequences: int | None = opt(None, "darwinlm / tyr: calibration windows of the database / supernet they "
                                               "build (default: --num-sequences; the export re-solves on 16)")
    database_seq_len: int | None = opt(None, "darwinlm / tyr: tokens per database / supernet calibration window "
                                             "(default: --seq-len; the export re-solves on 512)")
    tie_embeddings: bool = opt(False, "tie an output head stored apart from the embeddings but equal to them up to "
                                      "quantization noise (GGUF files): one tensor, counted once")
    include_embeddings: bool = opt(True, "count embeddings/lm_head in the budget (the paper does)")
    loss_chunk: int = opt(1024, "positions per lm_head chunk: the full logits tensor is never materialized")
    seed: int = opt(0, "seed for the LoRA probes and the search's RNG (the data splits are fixed: every seed is calibrated "
                        "on the same calibration split and evaluated on the same held-out split)")
    device: str = opt("auto", "auto, cpu, cuda, cuda:1, ...")
    dtype: str = opt("auto", "auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16",
                     choices=("auto", "float32", "bfloat16", "float16"))
    threads: int | None = opt(None, "CPU threads for torch (default: torch's choice, one per core)")
    score_on: str = opt("sliced", "score each candidate on a physically sliced copy of its kept weights (compute "
                                  "scales with what it keeps) or under masks on the dense model (the reference; "
                                  "same scores up to float rounding)", choices=("sliced", "masked"))
    compile: bool = opt(False, "torch.compile each decoder block (GPU); with --score-on sliced every new width is "
                               "compiled anew (when it pays: docs/scale.md)")
    activation_checkpointing: bool = opt(False, "recompute each block's activations in backward (gradient proxies): "
                                                "one more forward pass per trace, activation memory of one block "
                                                "instead of all (memory plans: docs/scale.md)")
    resume: bool = opt(False, "continue the search saved in --out (same config required)")

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise TracenasError(f"unknown preset {self.preset!r}; choose from {', '.join(PRESETS)}")
        if self.proxy is not None:
            get_proxy(self.proxy)  # the registry as it is now: an unknown name is a one-line error
        if self.strategy not in strategy_names():
            raise TracenasError(f"unknown strategy {self.strategy!r}; choose from {', '.join(strategy_names())}")
        self.check_positive("num_sequences", "seq_len", "rank", "population", "elites", "iterations", "micro_batch",
                            "loss_chunk", "database_sequences", "database_seq_len")
        self.prior_power_list()
        if self.init_depth_flips < 0:
            raise TracenasError("--init-depth-flips must be >= 0")
        if self.seq_len is not None and self.seq_len < 2:
            raise TracenasError("--seq-len must be at least 2")
        parse_budget_spec(self.budget)
        if self.budget_memory is not None and self.budget_flops is not None:
            raise TracenasError("give --budget-memory or --budget-flops, not both")
        if self.budget_memory is not None:
            normalize_memory_budget(self.budget_memory)
        if self.budget_flops is not None:
            parse_budget_spec(self.budget_flops)
        if self.budget_context < 1 or self.budget_batch < 1:
            raise TracenasError("--budget-context and --budget-batch must be at least 1")
        for name in ("crossover", "mutation_depth", "mutation_width"):
            if not 0 <= getattr(self, name) <= 1:
                raise TracenasError(f"--{name.replace('_', '-')} is a probability: it must be in [0, 1], "
                                    f"got {getattr(self, name)}")
        if not 0 <= self.budget_tolerance < 1:
            raise TracenasError(f"--budget-tolerance must be in [0, 1), got {self.budget_tolerance}")
        if self.jitter_sigma < 0:
            raise TracenasError(f"--jitter-sigma must be >= 0, got {self.jitter_sigma}")
        if self.min_layers is not None and self.min_layers < 1:
            raise TracenasError(f"--min-layers must be at least 1, got {self.min_layers}")
        strategy_class(self.strategy).check_options(self)  # what the chosen strategy refuses

    def preset_value(self, name: str):
        """Option `name` as given, or else as the search's preset sets it."""
        value = getattr(self, name)
        return value if value is not None else PRESETS[self.preset][name]

    def check_positive(self, *names: str) -> None:
        """Each of `names` (if set) is a positive integer."""
        for name in names:
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise TracenasError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")

    def check_int_lists(self, *names: str) -> None:
        """Each of `names` (if set) is comma-separated integers."""
        for name in names:
            value = getattr(self, name)
            try:
                if value is not None and not int_list(value):
                    raise ValueError
            except ValueError:
                raise TracenasError(f"--{name.replace('_', '-')} must be comma-separated integers, "
                                    f"got {value!r}") from None

    def prior_power_list(self) -> tuple[float, ...]:
        try:
            values = tuple(float(x) for x in str(self.prior_powers).split(",") if x.strip())
        except ValueError as err:
            raise TracenasError(f"--prior-powers must be comma-separated numbers, got {self.prior_powers!r}") from err
        if not values:
            raise TracenasError("--prior-powers needs at least one value")
        return values

    def budget_metric(self) -> BudgetMetric:
        """What `budget_value()` counts (parameters unless --budget-memory or --budget-flops is given)."""
        kind = "memory" if self.budget_memory is not None else "flops" if self.budget_flops is not None else "params"
        dtype_bytes = {"float32": 4, "bfloat16": 2, "float16": 2}[self.budget_dtype]
        return BudgetMetric(kind, dtype_bytes, self.budget_context, self.budget_batch)

    def budget_value(self) -> str:
        """The budget in the metric's unit (memory sizes as bytes), for `SearchSpace.resolve_budget`."""
        if self.budget_memory is not None:
            return normalize_memory_budget(self.budget_memory)
        return self.budget_flops if self.budget_flops is not None else self.budget

    def resolved(self) -> "SearchConfig":
        """A copy with every preset-controlled field filled in (the search's presets, then the strategy's)."""
        preset = dict(PRESETS[self.preset]) | strategy_presets(self.strategy).get(self.preset, {})
        values = {k: v for k, v in preset.items() if getattr(self, k) is None}
        return dataclasses.replace(self, **values)
