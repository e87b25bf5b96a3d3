"""The Triton backward's step 1 (mden = m + log(den + eps), dden, dnq; ``chunkwise_bw.step_cotangents``) at
one shape: the kernel with its default blocks and with other row / DHV blocks and warps, against the same
formulas as XLA compiles them from jnp. Times: median per call of ``QUEUED_CALLS`` calls issued back to
back over two input sets (the card's time, benchmarks/timing.py). Bytes: read dh and h (in the input
dtype), plus six fp32 per-step vectors (three read, three written); floor = bytes / the card's copy rate.
"error vs XLA": max |difference| / max |XLA's value| over the three outputs, on the first input set.

    python benchmarks/step_cotangents.py [--shape 8x8x8192x512] [--reps 20] [--out benchmarks/results/NAME.md]
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # for benchmarks.timing

from benchmarks.timing import (  # noqa: E402
    QUEUED_CALLS,
    card_ceilings,
    markdown_table,
    median_ms,
    shape_parser,
    write_report,
)
from xlstm_flax.kernels.triton import chunkwise_bw  # noqa: E402
from xlstm_flax.kernels.triton import chunkwise_bw_kernels as kernels  # noqa: E402
from xlstm_flax.kernels.triton.launch import triton_call  # noqa: E402

EPS = 1e-6
BLOCKS = [(8, 512, 4), (16, 128, 4), (32, 128, 4), (64, 128, 4), (32, 256, 4), (16, 512, 4), (32, 512, 8)]


def xla_step_one(dh, h, den, m, nq):
    """Step 1 in jnp (XLA fuses it as it likes)."""
    den_eps = den + EPS
    dh_dot_h = jnp.sum(dh.astype(jnp.float32) * h.astype(jnp.float32), axis=-1)
    return m + jnp.log(den_eps), -dh_dot_h / den_eps, -dh_dot_h * jnp.sign(nq) * (jnp.abs(nq) > jnp.exp(-m))


def kernel_with_blocks(rows: int, block_rows: int, block_dhv: int, warps: int):
    """``step_cotangents_kernel`` launched with the given blocks on (B, NH, S, DHV) dh, h."""

    def call(dh, h, den, m, nq):
        steps = jax.ShapeDtypeStruct(den.shape, jnp.float32)
        return triton_call(
            dh,
            h,
            den,
            m,
            nq,
            kernel=kernels.step_cotangents_kernel,
            out_shape=(steps, steps, steps),
            grid=(-(-rows // block_rows),),
            num_warps=warps,
            num_stages=2,
            ROWS=rows,
            DHV=dh.shape[-1],
            BT=block_rows,
            BV=block_dhv,
            EPS=EPS,
        )

    return call


def random_inputs(key, shape):
    """(dh, h, den, m, nq): bf16 (B, NH, S, DHV) dh and h, positive den and normal m, nq (B, NH, S)."""
    keys = jax.random.split(key, 5)
    dh, h = (jax.random.normal(k, shape, jnp.bfloat16) for k in keys[:2])
    den = jnp.exp(jax.random.normal(keys[2], shape[:-1]))
    m, nq = (jax.random.normal(k, shape[:-1]) for k in keys[3:])
    return dh, h, den, m, nq


def relative_error(got, want) -> float:
    """max |got - want| / max |want| over the three output vectors."""
    return max(float(jnp.max(jnp.abs(g - w)) / jnp.max(jnp.abs(w))) for g, w in zip(got, want, strict=True))


def main(argv=None) -> int:
    args = shape_parser(__doc__, "8x8x8192x512", "BxNHxSxDHV").parse_args(argv)
    B, NH, S, DHV = args.shape
    inputs = [random_inputs(jax.random.PRNGKey(seed), (B, NH, S, DHV)) for seed in range(2)]
    dh, _, den, _, _ = inputs[0]
    nbytes = 2 * dh.nbytes + 6 * den.nbytes
    floor = 1e3 * nbytes / card_ceilings().copy_bytes_per_s
    calls = [("XLA (jnp formulas)", xla_step_one)]
    calls.append(
        (
            f"kernel, defaults ({chunkwise_bw.STEP_ROWS} rows)",
            lambda *a: chunkwise_bw.step_cotangents(*a, EPS),
        )
    )
    calls += [
        (f"kernel, {bt} rows x {bv} DHV, {w} warps", kernel_with_blocks(B * NH * S, bt, bv, w)) for bt, bv, w in BLOCKS
    ]
    header = ["what", "ms", "TB/s", "% of floor", "error vs XLA"]
    want = jax.jit(xla_step_one)(*inputs[0])
    rows = []
    for label, fn in calls:
        error = relative_error(jax.jit(fn)(*inputs[0]), want)
        ms = median_ms(jax.jit(fn), inputs, reps=args.reps, queued=QUEUED_CALLS)
        rows.append([label, ms, nbytes / ms / 1e9, 100 * floor / ms, f"{error:.1e}"])
        print(markdown_table(header, rows[-1:]).splitlines()[-1], flush=True)
    notes = [f"- dh, h (B, NH, S, DHV) = {B}x{NH}x{S}x{DHV} bf16; {nbytes / 1e9:.2f} GB moved; floor {floor:.3f} ms"]
    write_report(
        "Backward step 1: Triton kernel vs XLA",
        [notes, [markdown_table(header, rows)]],
        args.out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
