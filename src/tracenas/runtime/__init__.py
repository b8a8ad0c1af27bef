"""Plumbing below every stage: config dataclasses <-> argparse/YAML, errors, device and threads, logs, run
directories (guards, atomic writes, staging), torchrun ranks, lazy exports, the chunked next-token loss."""
