#!/usr/bin/env bash
# One GPU call that checks the kernels and the HF parity: every `-m gpu` test, the HF cross-check with
# transformers, sLSTM layer timings and the mLSTM reset / no-reset timings. Logs and tables go to the
# folder given as $1 (default gpu_out/). Run from the repo root on the GPU machine, with .whl carried.
set -uo pipefail
out=${1:-gpu_out}
mkdir -p "$out"
source scripts/gpu_env.sh || exit 1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/card.txt"
status=0
timeout 300 python3 -m pytest -q -p no:cacheprovider --import-mode=append -m gpu -n 4 tests/gpu 2>&1 \
  | tee "$out/gpu_tests.log" | tail -25 || status=1
timeout 120 python3 scripts/check_hf_parity.py 2>&1 | tee "$out/hf_parity.log" | tail -25 || status=1
timeout 120 python3 benchmarks/slstm.py --splits 1,2,4,8 --skip train,decode --out "$out/slstm_layer_h200.md" \
  2>&1 | tail -12 || status=1
timeout 120 python3 benchmarks/kernels.py --kernels chunkwise--triton,chunkwise--jax --shapes 8x8x8192x256x512 \
  --segments 0,8 --out "$out/segments_h200.md" 2>&1 | tail -8 || status=1
exit $status
