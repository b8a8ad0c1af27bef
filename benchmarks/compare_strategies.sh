#!/usr/bin/env bash
# TraceNAS vs uniform vs random search on the embedded default model at 60% of its parameters,
# each pruned model recovered with the same tokens and evaluated on the same held-out split.
#   bash benchmarks/compare_strategies.sh [OUT_ROOT] [extra `tracenas run` flags...]
set -euo pipefail
root=${1:-runs/compare}; shift || true
tracenas run --out "$root/tracenas" --strategy evolution --budget 0.6 --preset quick "$@"
tracenas run --out "$root/uniform" --strategy uniform --budget 0.6 --preset quick --eval-base false \
  --stages search,export,recover,eval "$@"
tracenas run --out "$root/random" --strategy random --budget 0.6 --preset quick --eval-base false \
  --stages search,export,recover,eval "$@"
python - "$root" <<'PY'
import json, sys, pathlib
root = pathlib.Path(sys.argv[1])
def ppl(run, name):
    p = root / run / "eval" / name / "results.json"
    return json.loads(p.read_text())["perplexity"]["ppl"] if p.exists() else float("nan")
base = ppl("tracenas", "base")
print(f"base model perplexity: {base:.2f}")
print("| strategy | params | blocks kept | PPL zero-shot | PPL after recovery |")
print("|---|---:|---:|---:|---:|")
for run in ("tracenas", "uniform", "random"):
    arch = json.loads((root / run / "arch.json").read_text())
    print(f"| {run} | {arch['params'] / 1e6:.2f}M | {arch['num_layers_kept']}/{len(arch['layers'])} | "
          f"{ppl(run, 'pruned'):.2f} | {ppl(run, 'recovered'):.2f} |")
PY
