"""How a candidate is scored: the torch-free registry (`registry`), LoRA-B gradient traces and Φ (`traces`),
forward-pass and zero-cost proxies (`zero_cost`)."""
