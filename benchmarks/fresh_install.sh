#!/usr/bin/env bash
# Fresh-machine install, timed: a fresh clone of this repository's HEAD, a fresh venv, no pip cache, then the
# README's first command (its install part; add --run for the quick run too, ≈12 min on 2 cores).
#
#   bash benchmarks/fresh_install.sh            # install + `tracenas --help` / `tracenas search --help` times
#   bash benchmarks/fresh_install.sh --run      # ... and `tracenas run --preset quick`, checks runs/quick/report.md
#   KEEP=1 bash benchmarks/fresh_install.sh     # keep the clone (printed) instead of deleting it
#
# Needs the network to PyPI. Prints wall times; nothing is asserted on them.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
RUN_QUICK=0
[[ "${1:-}" == "--run" ]] && RUN_QUICK=1
WORK=$(mktemp -d /tmp/tracenas-fresh.XXXXXX)
[[ "${KEEP:-0}" == 1 ]] || trap 'rm -rf "$WORK"' EXIT
export PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

now() { date +%s.%N; }
secs() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$2"; }

git clone -q "$REPO" "$WORK/tracenas"
cd "$WORK/tracenas"
python3 -m venv .venv
. .venv/bin/activate
INSTALL=$(python .ci/readme_command.py 1 --install-only)
echo "install command (README, command 1): $INSTALL"
t0=$(now)
eval "$INSTALL" > "$WORK/install.log" 2>&1 || { tail -30 "$WORK/install.log"; exit 1; }
t1=$(now)
install_s=$(secs "$t0" "$t1")
python .ci/check_deps.py

# first call (cold file cache for the new venv), then the best of 3
help_times() {
  local first best=999 t
  for i in 1 2 3 4; do
    t0=$(now); "$@" > /dev/null; t1=$(now); t=$(secs "$t0" "$t1")
    [[ $i == 1 ]] && first=$t || best=$(python3 -c "print(min($best, $t))")
  done
  echo "first ${first} s, best of 3 ${best} s"
}
echo
echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg), $(python -V)"
echo "install (README command 1 without the run), no pip cache: ${install_s} s"
echo "tracenas --help:        $(help_times tracenas --help)"
echo "tracenas search --help: $(help_times tracenas search --help)"
echo "import tracenas.cli (python -X importtime, cumulative): $(python -X importtime -c 'import tracenas.cli' 2>&1 \
  | awk -F'|' '/ tracenas.cli$/ {printf "%.1f ms", $2 / 1000}')"
python - <<'PY'
import sys
import tracenas.cli
tracenas.cli.build_parser()
heavy = [m for m in ("torch", "transformers") if m in sys.modules]
print("modules loaded by the CLI's parser:", ", ".join(heavy) if heavy else "neither torch nor transformers")
PY
if [[ $RUN_QUICK == 1 ]]; then
  RUN=$(python .ci/readme_command.py 1)
  RUN=${RUN##*&& }
  t0=$(now)
  eval "$RUN"
  t1=$(now)
  test -f runs/quick/report.md
  echo "quick run ($RUN): $(secs "$t0" "$t1") s -> runs/quick/report.md"
fi
[[ "${KEEP:-0}" == 1 ]] && echo "kept: $WORK/tracenas"
exit 0
