"""Proxy validation (`tracenas validate-proxy`, paper Sec. 4.2, Table 1, Fig. 3): do proxy scores rank
pruned candidates like their held-out perplexity after an equal short recovery?

    config      ValidateConfig, presets, proxy names     candidates  sample_candidates
    truth       short_recover, ground_truth              scoring     Validator: proxy scores from shared passes
    records     candidates.jsonl (append, read, index)   stats       rank correlations over seeds
    report      table.md, results.json, plots            runner      run_validation (resume, torchrun ranks)

Everything below is importable from `tracenas.validate` itself.
"""

from tracenas.validate.candidates import sample_candidates
from tracenas.validate.config import (
    BUILTIN,
    FAMILIES,
    FORWARD_PROXIES,
    LABELS,
    PRESETS,
    TRACE_PROXIES,
    VARIANTS,
    ValidateConfig,
    ValidationResult,
)
from tracenas.validate.records import Records, append_record, read_records, repair_tail
from tracenas.validate.report import format_sweep, format_table, plot_scatter, plot_sweep, write_reports
from tracenas.validate.runner import proxy_names, run_validation
from tracenas.validate.scoring import SeedContext, Validator, variant_scores
from tracenas.validate.stats import rank_correlations, summarize, summarize_sweep
from tracenas.validate.truth import ground_truth, short_recover

__all__ = ["BUILTIN", "FAMILIES", "FORWARD_PROXIES", "LABELS", "PRESETS", "TRACE_PROXIES", "VARIANTS", "Records",
           "SeedContext", "ValidateConfig", "ValidationResult", "Validator", "append_record", "format_sweep",
           "format_table", "ground_truth", "plot_scatter", "plot_sweep", "proxy_names", "rank_correlations",
           "read_records", "repair_tail", "run_validation", "sample_candidates", "short_recover", "summarize",
           "summarize_sweep", "variant_scores", "write_reports"]
