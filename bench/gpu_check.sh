#!/usr/bin/env bash
# GPU checks of the trial engine, in about 5 minutes on an H100 (305 s on 2026-11-27), most
# telling first, so that a run cut off by its time limit loses the least:
#   1. the CUDA tests (pytest -m cuda: bf16 training, the graphed step against eager, NaN detection,
#      meta-device memory count vs torch.cuda.max_memory_allocated within 5%);
#   2. the GPU rows of bench/trial_speed.py (eager / graphed step vs whole trial): the bf16 rows at
#      32 px (two trials each: the first pays one-off costs such as cuDNN autotuning), with the
#      default 8 and the former 16 BatchNorm recalibration batches, without the compiled cell (at
#      32 px it is slower than eager, docs/engine.md); 100-epoch bf16 trials validated at
#      Hyperband's rungs (the step share of a trial long enough to be mostly steps);
#   3. bench/search_overhead.py: trials/hour with 1 and 2 workers sharing the GPU on trials of
#      several seconds (six figure-1 nets, width 48, 20 epochs on the CIFAR subset when --data is
#      given); on 0.3-s trials the answer is known (docs/engine.md: a worker's start costs more);
#   4. measured before (2026-11-26), so last: the fp32 rows (validating every epoch, and as a
#      Hyperband search trial does: after epochs 1, 3 and 5); timm's compiled dla34 at 224 against
#      ours; dla34 at 224.
# Writes gpu.txt, cuda_tests.txt, trial_speed_cuda.md (the tables, appended as each part ends) and
# search_overhead.txt under $OUT when set, else bench/out/.
#   bash bench/gpu_check.sh [--data PATH_TO_cifar10_subset.npz]
set -uo pipefail
cd "$(dirname "$0")/.."
dest=${OUT:-bench/out}
mkdir -p "$dest"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
data=()
if [ "${1:-}" = "--data" ]; then data=(--data "$2"); fi
md=$dest/trial_speed_cuda.md
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $py -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } | tee "$dest/gpu.txt"
timeout 150 $py -m pytest -m cuda tests/test_cuda.py -q -rA -p no:cacheprovider 2>&1 | tee "$dest/cuda_tests.txt"
status=${PIPESTATUS[0]}
part() {  # one bench invocation, its table appended to $md (also when it is cut off by its timeout)
    local limit=$1; shift
    timeout "$limit" $py bench/trial_speed.py --device cuda "${data[@]}" "$@" 2>&1 | tee -a "$md.log" \
        | grep --line-buffered -E '^\||^timm' >> "$md"
    local rc=${PIPESTATUS[0]}
    echo "" >> "$md"
    [ "$rc" = 0 ] || { echo "bench part ($*) exit $rc" | tee -a "$md"; status=1; }
}
part 120 --rows dla46_c@32,hda1m@32,dla34@32 --precisions bf16 --trials 2 --bn-batches 8 16 --no-compile --timm no
part 80 --rows dla46_c@32,hda1m@32 --precisions bf16 --epochs 100 --eval-every hyperband --no-compile --timm no
epochs=20  # on the CIFAR subset; digits (1,797 images) gets twice as many for trials of similar length
[ ${#data[@]} -gt 0 ] || epochs=40
timeout 150 $py bench/search_overhead.py "${data[@]}" --limit 0 --width 48 --epochs $epochs --trials 6 \
    --workers 1 2 --workers-only 2>&1 | tee "$dest/search_overhead.txt"
[ "${PIPESTATUS[0]}" = 0 ] || status=1
part 70 --rows dla46_c@32,hda1m@32,dla34@32 --precisions fp32 --eval-every 1 hyperband --timm no
part 100 --timm only
part 80 --rows dla34@224 --precisions bf16 --timm no
echo "gpu_check exit $status"
exit "$status"
