#!/usr/bin/env bash
# The GPU check (issue 22, item 5), in ONE call of the lent GPU machine (one H200, no network, python3 with
# torch, accelerate, peft, transformers; nvcc and cmake). What it measures, under gpu_check.* keys of
# metrics/bench_gpu.json: the default cycle's finetune (stages.finetune, shipped params.yaml, 4-bit QLoRA
# on CUDA) on a base with SmolLM2-135M's config and tokenizer and random weights (speed, not quality), and
# llama-bench pp512/tg128 of the exported q8_0 GGUF with -ngl 0 (all on the CPU) against -ngl 999, the
# llama.cpp being the pinned llama-cpp-python's, built there with CUDA. tests/gpu_check.py holds the steps.
#
#   1. here:    bash tests/gpu_check.sh pack
#               (.venv; under a minute) fills .gpu_check/ (git-ignored): the pinned trl, datasets, dill,
#               multiprocess, peft, transformers and bitsandbytes wheels (CUDA 13 and CPU libraries only),
#               llama.cpp's sources (a .tar.gz without docs, vocab models, tests, other backends) and the
#               student's config and tokenizer; prints the sizes and fails if the call would carry more
#               than 64 MiB (measured 2026-12: see docs/scale.md). One call carries it all: no part 2.
#   2. device:  the run tool, once:  command "bash tests/gpu_check.sh run", carry [".gpu_check"],
#               timeout_s 540. It stops itself after GPU_CHECK_BUDGET_S (450 s) with what it has: the
#               finetune runs on 2 cores while llama.cpp builds on the other 14, then export and bench.
#               $OUT gets gpu_check.json (the new keys, saved after each step), bench_gpu.json (merged),
#               llama_bench.json (llama-bench's own rows), run.log and build.log.
#   3. here:    bash tests/gpu_check.sh merge /work/.device/.../gpu_check.json   (files_at of that call)
#               puts the gpu_check.* keys into metrics/bench_gpu.json, keeping every other key.
#
# Rehearsal on a CPU box (no GPU; 4 minutes on 2 busy cores): GPU_CHECK_QUICK=1 bash tests/gpu_check.sh run
# (.venv's packages, max_steps 2, llama.cpp configured but not compiled, so no llama-bench; writes
# .gpu_check/out/ only, never metrics/). GPU_CHECK_KIND=cuda configures the CUDA flavour instead (needs
# nvcc, and cuBLAS in the toolkit or an nvidia-cublas wheel on PYTHONPATH).
set -euo pipefail
cd "$(dirname "$0")/.."
step=${1:-}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
  HF_HUB_DISABLE_TELEMETRY=1 DO_NOT_TRACK=1 HF_HOME=/tmp/gpu_check_hf

case $step in
pack)
  test -x .venv/bin/python || { echo "gpu_check pack needs .venv: run make setup" >&2; exit 1; }
  nice -n 19 .venv/bin/python -m tests.gpu_check pack
  ;;
run)
  export GPU_CHECK_T0=$(date +%s)
  test -f .gpu_check/llama.cpp.tar.gz || { echo "no .gpu_check/: run 'gpu_check.sh pack' here first" >&2; exit 1; }
  export OUT=${OUT:-$PWD/.gpu_check/out}
  mkdir -p "$OUT"
  if [ "${GPU_CHECK_QUICK:-0}" = 1 ]; then
    py=(nice -n 19 .venv/bin/python)
    export GPU_CHECK_KIND=${GPU_CHECK_KIND:-cpu}
  else
    py=(python3)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/gpu_check_site .gpu_check/wheels/*.whl
    export PYTHONPATH=/tmp/gpu_check_site
  fi
  rc=0
  "${py[@]}" -m tests.gpu_check run 2>&1 | tee "$OUT/run.log" || rc=$?
  cp "${GPU_CHECK_WORK:-/tmp/gpu_check}/build.log" "$OUT/build.log" 2>/dev/null || true
  if [ "${GPU_CHECK_QUICK:-0}" != 1 ] && [ -f "$OUT/gpu_check.json" ]; then
    "${py[@]}" -m tests.gpu_check merge "$OUT/gpu_check.json" && cp metrics/bench_gpu.json "$OUT/bench_gpu.json"
  fi
  exit $rc
  ;;
merge)
  .venv/bin/python -m tests.gpu_check merge "${2:?usage: gpu_check.sh merge PATH/gpu_check.json}"
  ;;
*)
  echo "usage: bash tests/gpu_check.sh pack | run | merge FILE   (the header says where each runs)" >&2
  exit 2
  ;;
esac
