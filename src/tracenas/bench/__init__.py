"""The bench stage: time to first token, time per output token, throughput and peak memory, pruned vs base."""
