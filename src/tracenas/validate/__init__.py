"""Proxy validation (`tracenas validate-proxy`, paper Sec. 4.2, Table 1, Fig. 3): do proxy scores rank
pruned candidates like their held-out perplexity after an equal short recovery?

    config      ValidateConfig, presets, Φ variants      candidates  sample_candidates
    truth       short_recover, ground_truth              scoring     Validator: proxy scores from shared passes
    records     candidates.jsonl (append, read, index)   stats       rank correlations over seeds
    report      table.md, results.json, plots            runner      run_validation (resume, torchrun ranks)

Everything below is importable from `tracenas.validate` itself.
"""

from __future__ import annotations

from tracenas.runtime.lazy import lazy_exports

# public name -> the submodule that defines it
_EXPORTS = {
    "sample_candidates": "candidates",
    "FAMILIES": "config",
    "PRESETS": "config",
    "VARIANTS": "config",
    "ValidateConfig": "config",
    "ValidationResult": "config",
    "proxy_label": "config",
    "Records": "records",
    "append_record": "records",
    "read_records": "records",
    "repair_tail": "records",
    "format_sweep": "report",
    "format_table": "report",
    "plot_scatter": "report",
    "plot_sweep": "report",
    "write_reports": "report",
    "proxy_names": "runner",
    "run_validation": "runner",
    "SeedContext": "scoring",
    "Validator": "scoring",
    "variant_scores": "scoring",
    "rank_correlations": "stats",
    "summarize": "stats",
    "summarize_sweep": "stats",
    "ground_truth": "truth",
    "short_recover": "truth",
}
__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
