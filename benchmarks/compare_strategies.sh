#!/usr/bin/env bash
# TraceNAS vs uniform vs random search on the embedded default model at 60% of its parameters,
# each pruned model recovered with the same tokens and evaluated on the same held-out split.
#   bash benchmarks/compare_strategies.sh [OUT_ROOT] [extra `tracenas run` flags...]
#   PARALLEL=1 bash benchmarks/compare_strategies.sh ...   # the three runs concurrently
# `tracenas run` skips finished stages, so rerunning this script only prints the table.
set -euo pipefail
root=${1:-runs/compare}; shift || true
run_one() {
  case $1 in
    evolution) tracenas run --out "$root/tracenas" --strategy evolution --budget 0.6 --preset quick "${@:2}" ;;
    *) tracenas run --out "$root/$1" --strategy "$1" --budget 0.6 --preset quick --eval-base false \
         --stages search,export,recover,eval "${@:2}" ;;
  esac
}
if [[ "${PARALLEL:-0}" == 1 ]]; then
  for s in evolution uniform random; do run_one "$s" "$@" > "$root.$s.log" 2>&1 & done
  wait
else
  for s in evolution uniform random; do run_one "$s" "$@"; done
fi
python - "$root" <<'PY'
import json, sys, pathlib
root = pathlib.Path(sys.argv[1])
def ppl(run, name):
    p = root / run / "eval" / name / "results.json"
    return json.loads(p.read_text())["perplexity"]["ppl"] if p.exists() else float("nan")
print(f"base model perplexity: {ppl('tracenas', 'base'):.2f}")
print("| strategy | params | blocks kept | candidates scored | PPL zero-shot | PPL after recovery |")
print("|---|---:|---:|---:|---:|---:|")
for run in ("tracenas", "uniform", "random"):
    arch = json.loads((root / run / "arch.json").read_text())
    n = json.loads((root / run / "search" / "summary.json").read_text())["candidates_scored"]
    print(f"| {run} | {arch['params'] / 1e6:.2f}M | {arch['num_layers_kept']}/{len(arch['layers'])} | {n} | "
          f"{ppl(run, 'pruned'):.2f} | {ppl(run, 'recovered'):.2f} |")
PY
