"""Search strategies: which genomes to score next. Pure Python + numpy; no module here imports torch
(`tests/test_architecture.py` imports each with torch blocked)."""
