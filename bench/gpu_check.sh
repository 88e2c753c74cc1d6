#!/usr/bin/env bash
# GPU checks of the trial engine, in under 6 minutes on an H100:
#   1. the CUDA tests (pytest -m cuda: bf16 training, the graphed step against eager, NaN detection,
#      meta-device memory count vs torch.cuda.max_memory_allocated within 5%);
#   2. the GPU rows of bench/trial_speed.py (eager / compiled / graphed step vs whole trial).
# Writes cuda_tests.txt and trial_speed_cuda.md under $OUT when set, else bench/out/.
#   bash bench/gpu_check.sh [--data PATH_TO_cifar10_subset.npz]
set -uo pipefail
cd "$(dirname "$0")/.."
dest=${OUT:-bench/out}
mkdir -p "$dest"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
data=()
if [ "${1:-}" = "--data" ]; then data=(--data "$2"); fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $py -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } | tee "$dest/gpu.txt"
timeout 150 $py -m pytest -m cuda tests/test_cuda.py -q -rA -p no:cacheprovider 2>&1 | tee "$dest/cuda_tests.txt"
tests=${PIPESTATUS[0]}
timeout 260 $py bench/trial_speed.py --device cuda --budget 200 "${data[@]}" --out "$dest/trial_speed_cuda.md" 2>&1 \
    | tee "$dest/trial_speed_log.txt"
bench=${PIPESTATUS[0]}
echo "cuda tests exit $tests, bench exit $bench"
[ "$tests" = 0 ] && [ "$bench" = 0 ]
