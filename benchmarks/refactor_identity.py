"""Byte-identity check for refactors, through the command line only (so it runs unchanged on both sides of a
move): tiny searches of every strategy (evolution with kl, phi, naswot; random; uniform; depth; darwinlm; tyr)
on two tiny models (Llama GQA, Qwen2 MHA), their exports (checkpoint, and a GGUF for one run), and a
`database build`; prints the sha256 of every file that carries a result (arch.json, history.jsonl,
search/state.json, the exported config and weights, the GGUF, the database's manifest and blocks, the
supernet's blocks), JSON files without their timings.

    git worktree add /tmp/before <old commit>
    PYTHONPATH=/tmp/before/src python benchmarks/refactor_identity.py /tmp/ident > before.json
    rm -rf /tmp/ident
    PYTHONPATH=src python benchmarks/refactor_identity.py /tmp/ident > after.json
    diff before.json after.json && echo identical

Use the same OUTDIR both times: arch.json records the model's path. About 6 minutes on one core.
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

torch.set_num_threads(1)

COMMON = ["--num-sequences", "2", "--seq-len", "32", "--budget", "0.7", "--budget-tolerance", "0.1", "--min-layers", "2",
          "--micro-batch", "2", "--threads", "1"]
EVOLUTION = ["--rank", "4", "--population", "5", "--elites", "2", "--iterations", "3"]
LEVELS = ["--offspring", "4", "--survivors", "2,1", "--stage-tokens", "40,64", "--iterations", "2"]
RUNS = {  # name: the search's own flags
    "evolution-kl": ["--strategy", "evolution", "--proxy", "kl", *EVOLUTION],
    "evolution-phi": ["--strategy", "evolution", "--proxy", "phi", *EVOLUTION],
    "random-phi": ["--strategy", "random", "--proxy", "phi", *EVOLUTION],
    "uniform-kl": ["--strategy", "uniform", "--proxy", "kl", *EVOLUTION],
    "evolution-naswot": ["--strategy", "evolution", "--proxy", "naswot", *EVOLUTION],
    "depth": ["--strategy", "depth"],
    "darwinlm": ["--strategy", "darwinlm", *LEVELS, "--finetune-tokens", "32,64", "--database-levels", "4"],
    "tyr": ["--strategy", "tyr", *LEVELS, "--rounds", "2"],
}
RESULT_FILES = ("arch.json", "history.jsonl", "search/state.json", "model/model.safetensors", "model/config.json",
                "model.gguf")


def cli(*args: str) -> None:
    with contextlib.redirect_stdout(io.StringIO()):  # keep stdout the JSON of hashes
        rc = main(list(args))
    if rc != 0:
        raise SystemExit(f"tracenas {' '.join(args)} exited {rc}")


def timeless(value):
    """A JSON value without its timings (keys naming seconds): those differ between any two runs."""
    if isinstance(value, dict):
        return {k: timeless(v) for k, v in value.items() if "seconds" not in k}
    return [timeless(v) for v in value] if isinstance(value, list) else value


def digest(path: Path) -> str:
    data = path.read_bytes()
    if path.suffix == ".json":
        data = json.dumps(timeless(json.loads(data)), sort_keys=True).encode()
    return hashlib.sha256(data).hexdigest()[:16]


out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
res = {}
for kind in ("llama-gqa", "qwen2-mha"):
    model = out / f"model-{kind}"
    if not model.exists():
        save_tiny(model, kind=kind)
    for name, flags in RUNS.items():
        run = out / f"{kind}-{name}"
        cli("search", "--model", str(model), "--out", str(run), *COMMON, *flags)
        cli("export", str(run))
        if kind == "llama-gqa" and name == "evolution-kl":
            gguf = out / f"{kind}-{name}.gguf"
            gguf.unlink(missing_ok=True)
            cli("export", str(run), "--format", "gguf", "--gguf-type", "f32", "--out", str(gguf))
            res[gguf.name] = digest(gguf)
        for f in RESULT_FILES:
            if (run / f).is_file():
                res[f"{run.name}/{f}"] = digest(run / f)
        for block in sorted((run / "supernet").rglob("*.safetensors")) if (run / "supernet").is_dir() else ():
            res[f"{run.name}/{block.relative_to(run)}"] = digest(block)
    db = out / f"{kind}-database"
    cli("database", "build", str(db), "--model", str(model), "--mlp-levels", "3", "--calib-sequences", "2",
        "--calib-seq-len", "16", "--threads", "1")
    for f in sorted(db.rglob("*")):
        if f.is_file() and f.suffix in (".safetensors", ".json"):
            res[f"{db.name}/{f.relative_to(db)}"] = digest(f)
print(json.dumps(res, indent=1))
