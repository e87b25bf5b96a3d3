"""The mLSTM step kernels ("step--jax", "step--triton" and its tilings) as decoding runs them: a loop of
``--steps`` steps inside one jit, the state (C, n, m) carried from step to step.

    python benchmarks/step_kernel.py [--shapes 2x8x256x512,8x8x256x512] [--steps 32]
        [--tunings "block_dhqk=256,block_dhv=32;block_dhqk=64,block_dhv=64,num_warps=8"] [--out FILE.md]

Shapes are B x NH x DHQK x DHV (the 7B layer: 8 heads of 256 x 512; a one-row decode runs B = 2,
sampling.MIN_DECODE_ROWS). q, k, v bf16, gates fp32, random. Time per step: the loop's queued median
(benchmarks/timing.py) over ``--steps``. The floor is reading and writing C in fp32 at the card's copy rate
(every other input and output is at most 1/DHV of that).
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp

sys.path.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from benchmarks.timing import (  # noqa: E402
    QUEUED_CALLS,
    card_ceilings,
    interleaved_median_ms,
    markdown_table,
    parse_shape,
    write_report,
)
from xlstm_flax.kernels import get_kernel  # noqa: E402

COLUMNS = ["shape B x NH x DHQK x DHV", "kernel", "tuning", "us per step", "C GB/s", "% of floor"]


def parse_tunings(text: str) -> list[dict]:
    """``"a=1,b=2;c=3"`` -> ``[{"a": 1, "b": 2}, {"c": 3}]`` (int values)."""
    tunings = []
    for part in filter(None, text.split(";")):
        pairs = [item.split("=") for item in part.split(",")]
        if any(len(pair) != 2 for pair in pairs):
            raise argparse.ArgumentTypeError(f"tuning {part!r} is not name=int,...")
        tunings.append({name.strip(): int(value) for name, value in pairs})
    return tunings


def step_loop(kernel_name: str, tuning: dict):
    """jit of (inputs (T, ...) per step, c, n, m) -> (sum of h, c, n, m) after T steps of the kernel."""
    kernel = get_kernel(kernel_name)

    def run(q, k, v, i, f, c, n, m):
        def body(t, carry):
            total, c, n, m = carry
            h, (c, n, m) = kernel(q[t], k[t], v[t], i[t], f[t], c, n, m, **tuning)
            return total + h[..., 0].astype(jnp.float32), c, n, m

        total = jnp.zeros(q.shape[1:3], jnp.float32)
        return jax.lax.fori_loop(0, q.shape[0], body, (total, c, n, m))

    return jax.jit(run)


def loop_inputs(shape, steps: int, seed: int):
    B, NH, K, V = shape
    keys = jax.random.split(jax.random.PRNGKey(seed), 8)
    return (
        jax.random.normal(keys[0], (steps, B, NH, K), jnp.bfloat16),
        jax.random.normal(keys[1], (steps, B, NH, K), jnp.bfloat16),
        jax.random.normal(keys[2], (steps, B, NH, V), jnp.bfloat16),
        2.0 * jax.random.normal(keys[3], (steps, B, NH), jnp.float32),
        3.0 + jax.random.normal(keys[4], (steps, B, NH), jnp.float32),
        jax.random.normal(keys[5], (B, NH, K, V), jnp.float32),
        jax.random.normal(keys[6], (B, NH, K), jnp.float32),
        jax.random.normal(keys[7], (B, NH), jnp.float32),
    )


def rows_for(shape, steps: int, tunings: list[dict], reps: int) -> list[list]:
    variants = [("step--jax", {}), ("step--triton", {})] + [("step--triton", t) for t in tunings]
    fns = [step_loop(name, tuning) for name, tuning in variants]
    input_sets = [loop_inputs(shape, steps, seed) for seed in range(3)]
    times = interleaved_median_ms(fns, input_sets, reps=reps, queued=QUEUED_CALLS)
    B, NH, K, V = shape
    c_bytes = 2 * 4 * B * NH * K * V  # C read and written once per step, fp32
    floor_us = c_bytes / card_ceilings().copy_bytes_per_s * 1e6
    rows = []
    for (name, tuning), ms in zip(variants, times):
        us = ms * 1e3 / steps
        label = ",".join(f"{k}={v}" for k, v in tuning.items()) or "default"
        rows.append(["x".join(map(str, shape)), name, label, us, c_bytes / us / 1e3, 100 * floor_us / us])
    return rows


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--shapes",
        default="2x8x256x512,8x8x256x512,32x8x256x512",
        type=lambda text: [parse_shape(s, "BxNHxDHQKxDHV") for s in text.split(",")],
    )
    parser.add_argument("--steps", type=int, default=32, help="steps per timed loop")
    parser.add_argument("--tunings", type=parse_tunings, default=[], help="extra step--triton tilings, ';'-separated")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--out", help="markdown file to write")
    args = parser.parse_args(argv)
    rows = []
    for shape in args.shapes:
        rows += rows_for(shape, args.steps, args.tunings, args.reps)
        print(markdown_table(COLUMNS, rows[-2 - len(args.tunings) :]), flush=True)
    return write_report("mLSTM step kernels in a decode loop", [[markdown_table(COLUMNS, rows)]], args.out)


if __name__ == "__main__":
    main()
