"""The eval stage: held-out perplexity and lm-evaluation-harness tasks (local JSONL tasks work offline)."""
