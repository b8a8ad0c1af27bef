"""Byte-identity check for refactors: tiny searches (each strategy; kl, phi, naswot) and their exports on two
tiny models (Llama GQA, Qwen2 MHA); prints the sha256 of arch.json, history.jsonl, search/state.json and the
exported config and weights.

    git worktree add /tmp/before <old commit>
    PYTHONPATH=/tmp/before/src python benchmarks/refactor_identity.py /tmp/ident > before.json
    rm -rf /tmp/ident
    PYTHONPATH=src python benchmarks/refactor_identity.py /tmp/ident > after.json
    diff before.json after.json && echo identical

Use the same OUTDIR both times: arch.json records the model's path.
"""
import contextlib
import hashlib
import io
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from conftest import save_tiny  # noqa: E402

from tracenas.cli import main  # noqa: E402
from tracenas.search.config import SearchConfig  # noqa: E402
from tracenas.search.runner import run_search  # noqa: E402

torch.set_num_threads(1)

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
res = {}
for kind in ("llama-gqa", "qwen2-mha"):
    model = out / f"model-{kind}"
    if not model.exists():
        save_tiny(model, kind=kind)
    for strategy, proxy in (("evolution", "kl"), ("evolution", "phi"), ("random", "phi"), ("uniform", "kl"), ("evolution", "naswot")):
        run = out / f"{kind}-{strategy}-{proxy}"
        run_search(SearchConfig(model=str(model), out=str(run), strategy=strategy, proxy=proxy, num_sequences=2, seq_len=32,
                                rank=4, population=5, elites=2, iterations=3, budget="0.7", budget_tolerance=0.1,
                                min_layers=2, micro_batch=2), progress=False)
        with contextlib.redirect_stdout(io.StringIO()):  # keep stdout the JSON of hashes
            main(["export", str(run)])
        for f in ("arch.json", "history.jsonl", "search/state.json", "model/model.safetensors", "model/config.json"):
            res[f"{run.name}/{f}"] = hashlib.sha256((run / f).read_bytes()).hexdigest()[:16]
print(json.dumps(res, indent=1))
