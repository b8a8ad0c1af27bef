#!/usr/bin/env bash
# Every GPU figure in two calls on a lent GPU (../shared/DEVICE.md): the CUDA tests, benchmarks/scale.py on all
# published shapes that fit, and a short real search + export + bench on the embedded default model.
#
#   one-time, in the checkout: echo /.gpu/ >> .git/info/exclude; put the first half of the default GGUF
#   (split -b 50000000 SmolLM2-135M-Instruct.Q4_1.gguf part.) and the gguf wheel into .gpu/a/, the second half
#   into .gpu/b/ (the device tool carries at most 64 MiB per call)
#   call 1 (carry .gpu/a):  bash benchmarks/gpu_suite.sh 1     CUDA tests; scale.py up to Llama-2-7B
#   call 2 (carry .gpu/b), right after call 1 (the machine is kept ~30 s):
#                           bash benchmarks/gpu_suite.sh 2     scale.py 8B and 14B; default-model trace speed,
#                                                              search (paper proxy, short), export, bench
#   or, in one call without the model (the two H100 goals of docs/scale.md first):
#                           bash benchmarks/gpu_suite.sh goals CUDA tests; scale.py SmolLM2-135M and Llama-2-7B,
#                                                              then Llama-3.2-1B and Llama-3.1-8B (sliced only);
#                                                              ~8 min on an H100 (figures: docs/scale.md)
# Outputs go to $OUT (the device tool brings that folder back), else /tmp/gpu-suite. Each step has its own
# timeout, so a slow step leaves the others' figures. Nothing here needs the network.
set -uo pipefail
PART=${1:-1}
OUT=${OUT:-/tmp/gpu-suite}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH="/tmp/site:$PWD/src:$PWD/tests${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
step() {  # step NAME SECONDS CMD...: run with a timeout, tee to $OUT/NAME.txt, never stop the suite
  local name=$1 secs=$2; shift 2
  echo "== $name ($(date +%T), limit ${secs}s): $*" | tee -a "$OUT/suite.log"
  timeout "$secs" "$@" > "$OUT/$name.txt" 2>&1
  echo "== $name exit $? ($(date +%T))" | tee -a "$OUT/suite.log"
  tail -n 25 "$OUT/$name.txt"
}
if [ "$PART" = goals ]; then
  export PYTHONUNBUFFERED=1
  nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
  $PY -c "import torch, transformers; print(torch.__version__, torch.version.cuda, transformers.__version__)" \
    | tee "$OUT/versions.txt"
  step tests 100 $PY -m pytest -q -p no:cacheprovider tests/test_gpu.py
  step scale-small 100 $PY benchmarks/scale.py --shapes SmolLM2-135M --micro-batch 16 --json "$OUT/scale-small.json"
  # 7-8B shapes at micro-batch 4 run out of the H100's 80 GB in the masked (dense) reference trace: micro-batch 1
  step scale-7b 230 $PY benchmarks/scale.py --shapes Llama-2-7B --micro-batch 1 --trials 2 --json "$OUT/scale-7b.json"
  step scale-more 150 $PY benchmarks/scale.py --shapes Llama-3.2-1B,Llama-3.1-8B --micro-batch 1 --no-masked \
    --trials 2 --json "$OUT/scale-more.json"
elif [ "$PART" = 1 ]; then
  nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
  $PY -c "import torch, transformers; print(torch.__version__, torch.version.cuda, transformers.__version__)" \
    | tee "$OUT/versions.txt"
  if ls .gpu/a/gguf-*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-deps --target /tmp/site .gpu/a/gguf-*.whl && mkdir -p /tmp/m && cp .gpu/a/part.* /tmp/m/
  fi
  step tests 200 $PY -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_sliced.py tests/test_losses.py
  step scale-small 330 $PY benchmarks/scale.py --shapes SmolLM2-135M,Llama-3.2-1B,Qwen2.5-1.5B,Llama-2-7B \
    --json "$OUT/scale-small.json"
else
  step scale-large 300 $PY benchmarks/scale.py --shapes Llama-3.1-8B,Qwen2.5-14B --json "$OUT/scale-large.json"
  MODEL=/tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf
  if [ -f .gpu/b/part.ab ] && [ -f /tmp/m/part.aa ]; then cat /tmp/m/part.aa .gpu/b/part.ab > "$MODEL"; fi
  if [ -f "$MODEL" ]; then
    step trace-speed 120 $PY benchmarks/trace_speed.py --model "$MODEL" --num-sequences 16 --seq-len 4096 --micro-batch 4
    step search 150 $PY -m tracenas search --model "$MODEL" --preset paper --population 10 --elites 2 --iterations 2 \
      --budget 0.6 --out "$OUT/run"
    step export 60 $PY -m tracenas export "$OUT/run"
    step bench 90 $PY -m tracenas bench "$OUT/run"
    cp "$OUT/run/search/summary.json" "$OUT/search-summary.json" 2>/dev/null
    rm -rf "$OUT/run/model"  # the checkpoint itself is not a figure (and too large to bring back)
  else
    echo "default model not assembled: carry .gpu/a in call 1 and .gpu/b in call 2 (../shared/DEVICE.md)" | tee -a "$OUT/suite.log"
  fi
fi
