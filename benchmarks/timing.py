"""Shared benchmark helpers: median timing on rotated random inputs, roofline numbers, markdown output."""
from __future__ import annotations

import datetime
import os
import statistics
import sys
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp

# Measured ceilings of the H100 machine the results in benchmarks/results/ come from: bf16 dense matmul, HBM copy.
H100_BF16_FLOPS = 790e12
H100_COPY_BYTES_PER_S = 3.0e12


def median_ms(fn: Callable, input_sets: Sequence[tuple], warmup: int = 3, reps: int = 20) -> float:
    """Median wall time in ms of ``fn(*inputs)``, rotating over ``input_sets`` (defeats L2 reuse)."""
    for k in range(warmup):
        jax.block_until_ready(fn(*input_sets[k % len(input_sets)]))
    times = []
    for k in range(reps):
        args = input_sets[k % len(input_sets)]
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def mlstm_inputs(shape, dtype, seed: int):
    """One random input set (q, k, v, i, f, dh) for shape (B, NH, S, DHQK, DHV): q, k, v, dh ~ N(0, 1)
    in ``dtype``; gates fp32, i ~ 2 N(0, 1), f ~ 3 + N(0, 1) (never zeros)."""
    B, NH, S, K, V = shape
    keys = jax.random.split(jax.random.PRNGKey(seed), 6)
    q = jax.random.normal(keys[0], (B, NH, S, K), dtype)
    k = jax.random.normal(keys[1], (B, NH, S, K), dtype)
    v = jax.random.normal(keys[2], (B, NH, S, V), dtype)
    i = 2.0 * jax.random.normal(keys[3], (B, NH, S), jnp.float32)
    f = 3.0 + jax.random.normal(keys[4], (B, NH, S), jnp.float32)
    dh = jax.random.normal(keys[5], (B, NH, S, V), dtype)
    return q, k, v, i, f, dh


def floor_ms(flops: float, min_bytes: float) -> float:
    """Roofline floor: the larger of compute time and minimum memory time, in ms."""
    return max(flops / H100_BF16_FLOPS, min_bytes / H100_COPY_BYTES_PER_S) * 1e3


def compiled_peak_bytes(jitted: Callable, *args) -> int:
    """Arguments + outputs + temporaries of the compiled program (XLA's memory analysis)."""
    stats = jitted.lower(*args).compile().memory_analysis()
    return int(stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes)


def environment_lines() -> list[str]:
    """Date, card and versions for a results header."""
    import triton

    return [
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- card: {jax.devices()[0].device_kind}",
        f"- jax {jax.__version__}, triton {triton.__version__}, python {sys.version.split()[0]}",
        f"- command: `{' '.join(sys.argv)}`",
    ]


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A markdown table; floats are written with 3 significant decimals."""
    def cell(x):
        return f"{x:.3f}" if isinstance(x, float) else str(x)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def write_report(title: str, sections: Sequence[Sequence[str]], out: str | None) -> str:
    """Joins a ``# title``, the environment lines and ``sections`` (lists of lines) into a markdown
    report; prints it and writes it to ``out`` when given. Returns the text."""
    parts = [f"# {title}", "", *environment_lines()]
    for lines in sections:
        parts += ["", *lines]
    text = "\n".join(parts) + "\n"
    print(text)
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w") as fh:
            fh.write(text)
    return text
