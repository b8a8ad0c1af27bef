"""Search strategies over genomes. `evolution` is pure Python + numpy (no torch, no transformers)."""
