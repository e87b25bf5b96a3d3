#!/usr/bin/env bash
# One GPU call for the issue-11 table (benchmarks/model.py): 1.3b training (cold then warm compilation
# cache, two processes), 7b prefill (last-logit vs full-logits) and 7b greedy decode with XLA command
# buffers off and on (while loops and conditionals included). Tables go to the folder given as $1
# (default gpu_out/). Run from the repo root on the GPU machine, with .whl carried. Each part has a timeout
# (580 s in all, within one 10-minute call); a part that runs out loses only its own table.
set -uo pipefail
out=${1:-gpu_out}
mkdir -p "$out"
source scripts/gpu_env.sh || exit 1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/card.txt"
bench() { timeout "$1" python3 benchmarks/model.py "${@:2}" 2>&1 | grep -v "^WARNING" | tail -8; }
status=0
cache=$(mktemp -d)  # empty: the first process compiles cold, the second reads what it wrote
bench 110 --preset 1.3b --train --shapes 8x2048 --compile-cache "$cache" --out "$out/train_1.3b_cold.md" || status=1
bench 150 --preset 1.3b --train --shapes 8x2048,2x8192 --compile-cache "$cache" --out "$out/train_1.3b_warm.md" \
  || status=1
bench 120 --preset 7b --prefill --full-logits --shapes 8x2048,1x2048 --steps 5 --out "$out/prefill_7b.md" || status=1
bench 120 --preset 7b --prefill --decode --shapes 8x8192 --decode-batches 1,8,32 --new-tokens 256 --steps 3 \
  --command-buffer "" --out "$out/decode_7b_no_command_buffers.md" || status=1
bench 80 --preset 7b --decode --decode-batches 1,8 --new-tokens 256 --steps 3 \
  --command-buffer "FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL" \
  --out "$out/decode_7b_command_buffers.md" || status=1
rm -rf "$cache"
exit $status
