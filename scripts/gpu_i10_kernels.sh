#!/usr/bin/env bash
# One GPU call for issue 10 (Triton mLSTM kernel speed, about 5 minutes on an H200): the mLSTM Triton
# `-m gpu` tests, then the Triton variants against chunkwise--jax at the issue's shapes (bf16):
#   fw:    default (bf16 chunk states), fused forward, chunkwise--jax
#   fw+bw: default, default + save_states, fused forward + save_states (the fused kernel's states are not
#          the recurrent kernel's call, so XLA cannot merge a recomputation with it), chunkwise--jax
#   7B only: fp32 chunk states (the old default) fw and fw+bw, and five more fused-forward tiles (fw).
# Markdown and logs go to the folder $1 (default $OUT, else gpu_out/); rows are logged as they come, so a
# timeout keeps the rows measured so far. Run from the repo root on the GPU machine, with .whl carried.
set -uo pipefail
out=${1:-${OUT:-gpu_out}}
mkdir -p "$out"
source scripts/gpu_env.sh || exit 1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/card.txt"
status=0
shapes=8x8x8192x256x512,8x16x8192x128x256,32x8x2048x256x512,1x8x8192x256x512
tri=chunkwise--triton
bench() {  # name, seconds, then benchmarks/kernels.py arguments
  local name=$1 seconds=$2
  shift 2
  timeout "$seconds" python3 benchmarks/kernels.py --out "$out/$name.md" "$@" 2>&1 | tee "$out/$name.log" \
    | grep '^| chunk' | awk '!seen[$0]++' || status=1
}
timeout 150 python3 -m pytest -q -p no:cacheprovider --import-mode=append -m gpu -n 4 \
  tests/gpu/test_triton_fw_gpu.py tests/gpu/test_triton_bw_gpu.py tests/gpu/test_triton_segments_gpu.py 2>&1 \
  | tee "$out/gpu_tests.log" | tail -15 || status=1
bench i10_fw 90 --modes fw --shapes $shapes --variants "$tri;$tri:fused_forward=True;chunkwise--jax"
bench i10_fwbw 150 --modes fwbw --shapes $shapes \
  --variants "$tri;$tri:save_states=True;$tri:fused_forward=True,save_states=True;chunkwise--jax"
bench i10_7b_extra 60 --modes fw,fwbw --shapes 8x8x8192x256x512 --variants "$tri:states_in_input_dtype=False"
bench i10_fused_tiles 75 --modes fw --shapes 8x8x8192x256x512 --variants "$tri:fused_forward=True,siz_b_DH_parallel=128;\
$tri:fused_forward=True,num_warps_intra=4;$tri:fused_forward=True,siz_b_L_parallel=128;\
$tri:fused_forward=True,siz_b_DH_loop=256;$tri:fused_forward=True,num_stages_intra=3"
exit $status
