#!/usr/bin/env bash
# The strategy comparison (benchmarks/compare_strategies.py) on a lent GPU machine, which has no network and no
# gensim / gguf / lm-eval: the embedded model travels as a GGUF cut in two (.gpu/a/part.aa, .gpu/b/part.ab), the
# default corpus as a JSONL of its documents (same splits), the out-of-domain text and task pre-built.
#   call 1 (carry .gpu/a):  bash benchmarks/gpu_compare.sh stage
#   call 2 (carry .gpu/b):  bash benchmarks/gpu_compare.sh run SECONDS [compare_strategies flags...]
set -u
case "$1" in
  stage)
    mkdir -p /tmp/m && cp .gpu/a/part.aa .gpu/a/corpus.jsonl /tmp/m/ &&
      python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/a/gguf-*.whl
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc
    python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
    ;;
  run)
    seconds=$2; shift 2
    cat /tmp/m/part.aa .gpu/b/part.ab > /tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf
    md5sum /tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf
    mkdir -p /tmp/cmp && cp -r .gpu/b/cmp/. /tmp/cmp/
    export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
    timeout "$seconds" python3 benchmarks/compare_strategies.py /tmp/cmp --device cuda \
      --model /tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf --data /tmp/m/corpus.jsonl "$@" > "$OUT/compare.log" 2>&1
    echo "compare exit $?"
    python3 benchmarks/compare_table.py /tmp/cmp --json "$OUT/table.json" > "$OUT/table.md" 2>&1
    cp /tmp/cmp/results.json "$OUT/" 2>/dev/null
    tar czf "$OUT/runs.tgz" -C /tmp/cmp --exclude='*.safetensors' --exclude='*.gguf' --exclude='*.bin' \
      --exclude='*.pt' --exclude='tokenizer*' --exclude='vocab.json' --exclude='merges.txt' . 2>/dev/null
    ls -la "$OUT"; cat "$OUT/table.md"; tail -5 "$OUT/compare.log"
    ;;
esac
