"""Tunes and times the Triton chunkwise backward (bf16) on the GPU, in one run: forward+backward of the
registry entry ``chunkwise--triton`` with its defaults (what training runs) and with
``save_states=True`` (chunk states kept from the forward), the default forward followed by the
backward in the configurations of ``CONFIGS`` (each backward kernel also timed on its own),
``chunkwise--jax`` forward+backward, and the compiled peak memory of forward+backward.

    python benchmarks/tune_triton_bw.py [--shapes 7b,nh16] [--reps 20] [--out benchmarks/results/triton_bw.md]

Counting (B NH heads, S steps, K = DHQK, V = DHV, L = 128 for every configuration so that TFLOP/s
compare):
* FLOP, forward: 4 S K V (states K^T V, inter-chunk q C) + S L (K + V) (causal half of q k^T, P v).
  Backward: 8 S K V (the dC recurrence, and q's, k's and v's inter-chunk products with C / dC) +
  S L (3 K + 2 V) (causal halves of dh v^T, q k^T and the three products with them). Not counted:
  the states recomputed for the backward (2 S K V, unless saved) and the repeated dh v^T / q k^T
  tiles of head-dim blocks. Forward+backward: B NH S (12 K V + L (4 K + 3 V)); 1.0e12 at 7b.
* Bytes, minimum (bf16): the forward reads q, k, v and writes h; the backward reads q, k, v, h, dh and
  writes dq, dk, dv: 2 B NH S (6 K + 6 V) (4.8 GB at 7b). The kernels also write and read the states
  and state cotangents at every intra-chunk boundary, about 4 * 4 B NH (S / L) K V bytes in bf16 (the
  default, ``states_in_input_dtype``), twice that in fp32.
* Floor = max(FLOP / matmul ceiling, minimum bytes / copy ceiling) of the card (benchmarks/timing.py); 1.6 ms at 7b.

Correctness: every configuration's gradients (q, k, v, i, f) vs ``chunkwise--jax``'s on the same
random data, relative Frobenius error <= 5e-2 (both bf16; see tests/gpu/test_triton_bw_gpu.py).
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # for benchmarks.timing

from benchmarks.kernel_breakdown import kernel_timings  # noqa: E402
from benchmarks.timing import (  # noqa: E402
    compiled_peak_bytes,
    floor_ms,
    markdown_table,
    median_ms,
    mlstm_inputs,
    write_report,
)
from benchmarks.tune_triton_fw import RECURRENT_SWEEP as FW_RECURRENT_SWEEP  # noqa: E402
from xlstm_flax.kernels import common, get_kernel  # noqa: E402
from xlstm_flax.kernels.triton import chunkwise_bw as bw  # noqa: E402
from xlstm_flax.kernels.triton.chunkwise_fw import mlstm_chunkwise_fw_result  # noqa: E402

BF16_TOL = 5e-2
EPS = 1e-6  # the registry's default
FLOP_MODEL_CHUNK = 128
SHAPES = {  # name: (B, NH, S, DHQK, DHV)
    "7b": (8, 8, 8192, 256, 512),
    "nh16": (8, 16, 8192, 128, 256),
    "nh32": (8, 32, 8192, 128, 128),
}
DEFAULT_SHAPES = "7b,nh16"
TARGET_MS = {"7b": 18.5, "nh16": 11.8}

# Backward configurations per shape (BwConfig field names), each run after the default forward ({} = the
# backward's defaults, chunk_size_intra as the registry picks it), each kernel also timed on its own. Add
# tuning dicts here to compare configurations (benchmarks/results/triton_bw_h100.md lists those already measured).
CONFIGS = {name: [{}] for name in SHAPES}
CONFIGS["7b"] = [
    {},
    {"block_dh_owned": 256, "num_warps_parallel": 8},
    {"num_warps_parallel": 8},
    {"chunk_size_recurrent": 256, "num_stages_parallel": 3},
]
# The dC recurrence alone (--recurrent-only): the 7B default before dC and dn got programs of their own,
# then the forward's recurrent sweep (chunk_size_recurrent, tile DHQK x DHV, warps, stages).
RECURRENT_SWEEP = [(256, 64, 64, 4, 2), *FW_RECURRENT_SWEEP]
RECURRENT_NAMES = (
    "chunk_size_recurrent",
    "block_dhqk_recurrent",
    "block_dhv_recurrent",
    "num_warps_recurrent",
    "num_stages_recurrent",
)


def flops(B, NH, S, K, V) -> float:
    return B * NH * S * (12 * K * V + FLOP_MODEL_CHUNK * (4 * K + 3 * V))


def min_bytes(B, NH, S, K, V) -> float:
    return 2 * B * NH * S * (6 * K + 6 * V)


def forward_backward(name, **options):
    """jit(q, k, v, i, f, dh -> gradients of q, k, v, i, f) through registry kernel ``name``."""
    kernel = get_kernel(name)

    @jax.jit
    def fwbw(q, k, v, i, f, dh):
        h, vjp = jax.vjp(lambda *a: kernel(*a, **options), q, k, v, i, f)
        return vjp(dh.astype(h.dtype))

    return fwbw


def forward_then_backward(S, **bw_tuning):
    """What the registry entry runs (S a multiple of its chunk, so no padding), with the default
    forward and the backward tuned by ``bw_tuning``: gradients of q, k, v, i, f."""
    fw_intra = common.default_chunk_size(S)
    bw_tuning = {"chunk_size_intra": fw_intra, **bw_tuning}

    @jax.jit
    def fwbw(q, k, v, i, f, dh):
        fw = mlstm_chunkwise_fw_result(q, k, v, i, f, eps=EPS, chunk_size_intra=fw_intra)
        grads = bw.mlstm_chunkwise_bw(
            q, k, v, i, f, None, None, None, fw.matH, fw.vecDen, fw.vecM, fw.vecNQ, dh, eps=EPS, **bw_tuning
        )
        return grads[:5]

    return fwbw, bw_tuning


def _rel_errors(got, want) -> float:
    """Largest relative Frobenius error over the gradients of q, k, v, i, f."""
    errs = []
    for g, w in zip(got, want):
        g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
        errs.append(np.linalg.norm(g - w) / np.linalg.norm(w))
    return float(max(errs))


def recurrent_rows(name, input_sets, reps):
    """Rows of the dC recurrence alone for every RECURRENT_SWEEP candidate that fits the shape."""
    _, _, _, K, V = SHAPES[name]
    rows = []
    for candidate in RECURRENT_SWEEP:
        if candidate[1] > K or candidate[2] > V:
            continue
        tuning = dict(zip(RECURRENT_NAMES, candidate))
        label = "dC recurrence " + ", ".join(f"{k}={v}" for k, v in tuning.items())
        try:
            ms = f"{kernel_timings(input_sets, tuning, reps, names=('dC recurrence',))['dC recurrence']:.3f}"
        except Exception as exc:  # a candidate the GPU cannot run (e.g. too much shared memory)
            ms = f"failed: {type(exc).__name__}: {str(exc)[:80]}"
        rows.append([name, label, ms, "-", "-", "-", "-", "-"])
        print(" | ".join(rows[-1]), flush=True)
    return rows


def tune_shape(name, input_sets, reps):
    B, NH, S, K, V = SHAPES[name]
    flop, floor = flops(B, NH, S, K, V), floor_ms(flops(B, NH, S, K, V), min_bytes(B, NH, S, K, V))
    rows, notes = [], []
    jax_fwbw = forward_backward("chunkwise--jax")
    want = jax_fwbw(*input_sets[0])
    jax_peak = compiled_peak_bytes(jax_fwbw, *input_sets[0]) / 2**30
    jax_ms = median_ms(jax_fwbw, input_sets, reps=reps)
    rows.append(
        [
            name,
            "chunkwise--jax fw+bw",
            f"{jax_ms:.2f}",
            f"{flop / jax_ms / 1e9:.0f}",
            f"{100 * floor / jax_ms:.0f}",
            f"{jax_peak:.1f}",
            "-",
            "reference",
        ]
    )
    print(" | ".join(rows[-1]), flush=True)
    del jax_fwbw
    runs = [
        ("triton fw+bw (registry, defaults)", forward_backward("chunkwise--triton"), None),
        ("triton fw+bw (registry, save_states=True)", forward_backward("chunkwise--triton", save_states=True), None),
    ]
    for tuning in CONFIGS[name]:
        fwbw, bw_tuning = forward_then_backward(S, **tuning)
        label = "fw defaults + bw " + (", ".join(f"{k}={v}" for k, v in tuning.items()) or "defaults")
        runs.append((label, fwbw, bw_tuning))
    for label, fwbw, bw_tuning in runs:
        try:
            err = _rel_errors(fwbw(*input_sets[0]), want)
            ms = median_ms(fwbw, input_sets, reps=reps)
            peak = compiled_peak_bytes(fwbw, *input_sets[0]) / 2**30
            per_kernel = (
                "-"
                if bw_tuning is None
                else " / ".join(f"{n} {t:.2f}" for n, t in kernel_timings(input_sets, bw_tuning, reps).items())
            )
        except Exception as exc:  # a configuration the GPU cannot run (e.g. too much shared memory)
            rows.append([name, label, "failed", "-", "-", "-", "-", f"{type(exc).__name__}: {str(exc)[:80]}"])
            print(f"{name} {label}: FAILED {exc}", flush=True)
            continue
        rows.append(
            [
                name,
                label,
                f"{ms:.2f}",
                f"{flop / ms / 1e9:.0f}",
                f"{100 * floor / ms:.0f}",
                f"{peak:.1f}",
                per_kernel,
                f"{err:.1e} {'ok' if err <= BF16_TOL else 'WRONG'}",
            ]
        )
        print(" | ".join(rows[-1]), flush=True)
    target = f", target <= {TARGET_MS[name]} ms" if name in TARGET_MS else ""
    notes.append(f"- {name} (B, NH, S, DHQK, DHV) = {SHAPES[name]}: floor {floor:.2f} ms{target}")
    return rows, notes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default=DEFAULT_SHAPES, help="comma-separated names of SHAPES")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--recurrent-only", action="store_true", help="time the dC recurrence candidates only")
    parser.add_argument("--out", default=None, help="markdown file for the results table")
    args = parser.parse_args(argv)
    rows, notes = [], []
    for name in args.shapes.split(","):
        B, NH, S, K, V = SHAPES[name]
        input_sets = [mlstm_inputs((B, NH, S, K, V), jnp.bfloat16, seed) for seed in (0, 1)]
        if args.recurrent_only:
            shape_rows, shape_notes = recurrent_rows(name, input_sets, args.reps), []
        else:
            shape_rows, shape_notes = tune_shape(name, input_sets, args.reps)
        rows += shape_rows
        notes += shape_notes
        del input_sets
    table = markdown_table(
        [
            "shape",
            "what",
            "ms",
            "TFLOP/s",
            "% of floor",
            "peak GiB",
            "bw kernels ms",
            "max rel err vs jax",
        ],
        rows,
    )
    write_report("Triton chunkwise forward+backward, bf16", [notes, [table]], args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
