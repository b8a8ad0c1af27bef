#!/usr/bin/env bash
# Search strategies and proxies compared end to end on the embedded default model at 60% of its
# parameters: every result exported, recovered with the same tokens and evaluated on the same held-out
# split.
#   bash benchmarks/compare_strategies.sh [OUT_ROOT] [extra `tracenas run` flags...]
# Environment:
#   PROXIES="kl phi"                  evolution runs, one per search proxy (run dirs evolution-<proxy>)
#   STRATEGIES="uniform random"       baselines (run dirs <strategy>; random search scores with the first proxy;
#                                     STRATEGIES="" for none)
#   PARALLEL=1                        all runs concurrently (use OMP_NUM_THREADS=1 on a small machine)
#   extra flags, e.g. --seed 1        a second replicate: use another OUT_ROOT
# `tracenas run` skips finished stages, so rerunning this script only prints the table.
set -euo pipefail
root=${1:-runs/compare}; shift || true
read -r -a proxies <<< "${PROXIES:-kl phi}"
read -r -a baselines <<< "${STRATEGIES-uniform random}"
mkdir -p "$root"
run_one() {  # NAME STRATEGY PROXY [flags...]
  local extra=()
  [[ $1 == "evolution-${proxies[0]}" ]] || extra=(--eval-base false --stages search,export,recover,eval)
  tracenas run --out "$root/$1" --strategy "$2" --proxy "$3" --budget 0.6 --preset quick "${extra[@]}" "${@:4}"
}
jobs_=()
for p in "${proxies[@]}"; do jobs_+=("evolution-$p evolution $p"); done
for s in "${baselines[@]}"; do jobs_+=("$s $s ${proxies[0]}"); done
for j in "${jobs_[@]}"; do
  read -r name strategy proxy <<< "$j"
  if [[ "${PARALLEL:-0}" == 1 ]]; then
    run_one "$name" "$strategy" "$proxy" "$@" > "$root/$name.log" 2>&1 &
  else
    run_one "$name" "$strategy" "$proxy" "$@"
  fi
done
wait
python "$(dirname "$0")/compare_table.py" "$root"
