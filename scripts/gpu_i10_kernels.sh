#!/usr/bin/env bash
# One GPU call for issue 10 (Triton mLSTM kernel speed, about 5 minutes on an H200): the mLSTM Triton
# `-m gpu` tests, then one benchmark run that times the Triton variants against chunkwise--jax at the
# issue's shapes, fw and fw+bw: fp32 chunk states (the old default), bf16 chunk states (the default),
# the opt-in fused forward; plus two fused-forward tiles at the 7B shape (fw only). Logs and markdown go
# to the folder given as $1 (default $OUT, else gpu_out/). Run from the repo root, with .whl carried.
set -uo pipefail
out=${1:-${OUT:-gpu_out}}
mkdir -p "$out"
source scripts/gpu_env.sh || exit 1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/card.txt"
status=0
timeout 150 python3 -m pytest -q -p no:cacheprovider --import-mode=append -m gpu -n 4 \
  tests/gpu/test_triton_fw_gpu.py tests/gpu/test_triton_bw_gpu.py tests/gpu/test_triton_segments_gpu.py 2>&1 \
  | tee "$out/gpu_tests.log" | tail -15 || status=1
timeout 240 python3 benchmarks/kernels.py --modes fw,fwbw \
  --shapes 8x8x8192x256x512,8x16x8192x128x256,32x8x2048x256x512,1x8x8192x256x512 \
  --variants "chunkwise--triton:states_in_input_dtype=False;chunkwise--triton;chunkwise--triton:fused_forward=True;chunkwise--jax" \
  --out "$out/h200_kernels_variants.md" 2>&1 | tail -34 || status=1
timeout 60 python3 benchmarks/kernels.py --modes fw --shapes 8x8x8192x256x512 \
  --variants "chunkwise--triton:fused_forward=True,siz_b_DH_parallel=128;chunkwise--triton:fused_forward=True,num_warps_intra=4" \
  --out "$out/h200_fused_tiles.md" 2>&1 | tail -4 || status=1
exit $status
