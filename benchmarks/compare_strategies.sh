#!/usr/bin/env bash
# Issue 18's whole protocol on the embedded default model: every strategy row of compare_strategies.py through the
# same export -> recovery -> evaluation, at 60 % with 3 seeds and at 80 % with 1 seed, then the table.
#   bash benchmarks/compare_strategies.sh [OUT_ROOT] [compare_strategies.py flags...]
#   bash benchmarks/compare_strategies.sh runs/compare --jobs 2        # the CPU table of docs/comparison.md (float32)
# Every finished stage is skipped, so rerunning resumes (and, once all is done, only prints the table).
# The end-to-end proxy table of docs/proxy-validation.md came from the first version of this script:
#   git show 9403e9f:benchmarks/compare_strategies.sh
set -euo pipefail
root=${1:-runs/compare}; shift || true
here=$(dirname "$0")
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
python "$here/compare_strategies.py" "$root" --budgets 0.6 --seeds 0 1 2 "$@"
python "$here/compare_strategies.py" "$root" --budgets 0.8 --seeds 0 "$@"
