"""Tunes and times the Triton chunkwise forward (bf16) on the GPU; one run sweeps a few configurations
per shape, checks each against ``chunkwise--jax`` on the same random data, and times cuDNN causal
attention on the same token count for comparison.

    python -m benchmarks.tune_triton_fw [--quick] [--out benchmarks/results/triton_fw.md]

Counting (per forward, B NH heads, S steps, K = DHQK, V = DHV):
* FLOP: recurrent kernel 2 S K V (K^T V per chunk); parallel kernel 2 S K V (q C) plus the causal
  half of the intra-chunk q k^T and P v, S L (K + V). With L = 128 for every row, so that TFLOP/s is
  comparable across configurations: B NH S (4 K V + 128 (K + V)); 3.3e11 at the xLSTM-7B layer.
* Bytes, minimum: q, k, v read and h written once in bf16, 2 B NH S (2 K + 2 V) (1.6 GB at 7B). The
  kernels also write and read the fp32 states at every intra boundary, 8 B NH (S / L + 1) K V bytes.
* Floor = max(FLOP / 790e12, minimum bytes / 3.0e12) (benchmarks/timing.py), about 0.55 ms at 7B.

Correctness: h of every configuration vs ``chunkwise--jax`` h (bf16 inputs, both accumulate in fp32),
``max|h - h_jax| <= 3e-2 * max|h_jax|`` (bf16 rounding of the states and scores before the dots).
"""
from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp

from benchmarks.timing import environment_lines, floor_ms, markdown_table, median_ms
from xlstm_flax.kernels import get_kernel
from xlstm_flax.kernels.triton.chunkwise_fw import (
    default_chunk_size, mlstm_chunkwise_fw_result, mlstm_chunkwise_states,
)

BF16_TOL = 3e-2
RECURRENT_OPTIONS = ("siz_b_DHQK_inter", "siz_b_DHV_inter", "num_warps_inter", "num_stages_inter")
FLOP_MODEL_CHUNK = 128

SHAPES = {  # name: (B, NH, S, DHQK, DHV)
    "7b": (8, 8, 8192, 256, 512),
    "nh16": (8, 16, 8192, 128, 256),
}

# A handful of configurations per shape; {} = the library defaults.
CONFIGS = {
    "7b": [
        {},
        dict(siz_b_DH_parallel=256, num_warps_intra=8),
        dict(chunk_size_intra=256, chunk_size_inter=128, siz_b_DH_parallel=128),
        dict(chunk_size_intra=256, chunk_size_inter=64, siz_b_L_parallel=64, siz_b_L_loop=64,
             siz_b_DH_parallel=256, num_warps_intra=8),
        dict(siz_b_DHQK_inter=128, siz_b_DHV_inter=128, num_warps_inter=8),
        dict(siz_b_L_parallel=128, siz_b_L_loop=64, siz_b_DH_parallel=128, num_warps_intra=8),
        dict(siz_b_DH_loop=128, siz_b_DH_parallel=128, num_warps_intra=8, num_stages_intra=3),
    ],
    "nh16": [
        {},
        dict(siz_b_DH_parallel=256, num_warps_intra=8),
        dict(chunk_size_intra=256, chunk_size_inter=128),
        dict(siz_b_DH_loop=128, siz_b_DH_parallel=128, num_warps_intra=8),
        dict(siz_b_DHQK_inter=128, siz_b_DHV_inter=128, num_warps_inter=8),
        dict(siz_b_L_parallel=128, siz_b_L_loop=64, num_warps_intra=8),
    ],
}


def flops(B, NH, S, K, V) -> float:
    return B * NH * S * (4 * K * V + FLOP_MODEL_CHUNK * (K + V))


def min_bytes(B, NH, S, K, V) -> float:
    return 2 * B * NH * S * (2 * K + 2 * V)


def random_inputs(key, B, NH, S, K, V):
    """bf16 q, k, v ~ N(0, 1); input gate N(0, 4); forget gate N(3, 1) (never zeros)."""
    kq, kk, kv, ki, kf = jax.random.split(key, 5)
    return (
        jax.random.normal(kq, (B, NH, S, K), jnp.bfloat16),
        jax.random.normal(kk, (B, NH, S, K), jnp.bfloat16),
        jax.random.normal(kv, (B, NH, S, V), jnp.bfloat16),
        2.0 * jax.random.normal(ki, (B, NH, S), jnp.float32),
        3.0 + jax.random.normal(kf, (B, NH, S), jnp.float32),
    )


def _forward(**tuning):
    @jax.jit
    def fw(q, k, v, i, f):
        result = mlstm_chunkwise_fw_result(q, k, v, i, f, **tuning)
        return result.matH, result.vecN, result.vecM

    return fw


def _states(S, **tuning):
    """Only the recurrent kernel, with the configuration's recurrent-kernel choices."""
    intra = tuning.get("chunk_size_intra", default_chunk_size(S))
    options = dict(chunk_size_intra=intra, chunk_size_inter=tuning.get("chunk_size_inter", intra))
    options.update({name: tuning[name] for name in RECURRENT_OPTIONS if name in tuning})
    return jax.jit(lambda q, k, v, i, f: mlstm_chunkwise_states(k, v, i, f, **options))


def _rel_err(got, want) -> float:
    got, want = got.astype(jnp.float32), want.astype(jnp.float32)
    return float(jnp.max(jnp.abs(got - want)) / jnp.max(jnp.abs(want)))


def tune_shape(name, input_sets, reps):
    B, NH, S, K, V = SHAPES[name]
    want = jax.jit(get_kernel("chunkwise--jax"))(*input_sets[0])
    jax_ms = median_ms(jax.jit(get_kernel("chunkwise--jax")), input_sets, reps=reps)
    floor = floor_ms(flops(B, NH, S, K, V), min_bytes(B, NH, S, K, V))
    rows = [[name, "chunkwise--jax", f"{jax_ms:.3f}", "-", f"{flops(B, NH, S, K, V) / jax_ms / 1e9:.1f}",
             f"{100 * floor / jax_ms:.0f}", "reference"]]
    best = None
    for tuning in CONFIGS[name]:
        label = ", ".join(f"{k}={v}" for k, v in tuning.items()) or "defaults"
        try:
            fw = _forward(**tuning)
            err = _rel_err(fw(*input_sets[0])[0], want)
            ms = median_ms(fw, input_sets, reps=reps)
            states_ms = median_ms(_states(S, **tuning), input_sets, reps=reps)
        except Exception as exc:  # a config the GPU cannot run (e.g. too much shared memory)
            rows.append([name, label, "failed", "-", "-", "-", f"{type(exc).__name__}: {str(exc)[:80]}"])
            print(f"{name} {label}: FAILED {exc}", flush=True)
            continue
        ok = err <= BF16_TOL
        rows.append([name, label, f"{ms:.3f}", f"{states_ms:.3f}", f"{flops(B, NH, S, K, V) / ms / 1e9:.1f}",
                     f"{100 * floor / ms:.0f}", f"{err:.1e} {'ok' if ok else 'WRONG'}"])
        print(" | ".join(rows[-1]), flush=True)
        if ok and (best is None or ms < best[0]):
            best = (ms, label)
    return rows, floor, best


def cudnn_attention_ms(reps) -> float:
    """jax.nn.dot_product_attention, cuDNN, causal, B=8, S=8192, 32 heads x 128, bf16, forward."""
    keys = jax.random.split(jax.random.PRNGKey(1), 6)
    sets = [tuple(jax.random.normal(kk, (8, 8192, 32, 128), jnp.bfloat16) for kk in keys[3 * n:3 * n + 3])
            for n in range(2)]
    attn = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn"))
    return median_ms(attn, sets, reps=reps)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="only the first two configurations per shape")
    parser.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated names of SHAPES")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--out", default=None, help="markdown file for the results table")
    args = parser.parse_args(argv)
    if args.quick:
        for name in CONFIGS:
            CONFIGS[name] = CONFIGS[name][:2]
    rows, notes = [], []
    for name in args.shapes.split(","):
        B, NH, S, K, V = SHAPES[name]
        input_sets = [random_inputs(jax.random.PRNGKey(seed), B, NH, S, K, V) for seed in (0, 1)]
        shape_rows, floor, best = tune_shape(name, input_sets, args.reps)
        rows += shape_rows
        notes.append(f"- {name} (B, NH, S, DHQK, DHV) = {SHAPES[name]}: floor {floor:.3f} ms, "
                     f"best {best[0]:.3f} ms ({best[1]})" if best else f"- {name}: no configuration passed")
        del input_sets
    attention = cudnn_attention_ms(args.reps)
    notes.append(f"- cuDNN causal attention (jax.nn.dot_product_attention), B=8, S=8192, 32 x 128 bf16, "
                 f"forward: {attention:.3f} ms")
    table = markdown_table(["shape", "config", "ms", "states ms", "TFLOP/s", "% of floor", "max rel err vs jax"], rows)
    text = "\n".join(["# Triton chunkwise forward, bf16", "", *environment_lines(), "", *notes, "", table, ""])
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as fh:
            fh.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
