"""Shared benchmark helpers: median timing on rotated random inputs, roofline numbers, markdown output."""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp


class Ceilings(NamedTuple):
    """Measured ceilings of one card: bf16 dense matmul on random data and device-to-device copy (bytes
    read + written per second)."""

    card: str
    bf16_flops: float
    copy_bytes_per_s: float


# Measured on the machines the results in benchmarks/results/ come from (H200: 788 TFLOP/s on an
# 8192^3 bf16 product, 670-790 across runs, 4.3 TB/s copy; H100: 790 TFLOP/s, 3.0 TB/s). Keyed by a
# substring of jax's device_kind; "H200" is checked before "H100" because neither contains the other.
CEILINGS = (Ceilings("H200", 790e12, 4.3e12), Ceilings("H100", 790e12, 3.0e12))
DEFAULT_CEILINGS = CEILINGS[1]
QUEUED_CALLS = 10  # calls issued back to back per timed sample when timing the card's time per call


def card_ceilings(device_kind: str | None = None) -> Ceilings:
    """The ceilings of the card named ``device_kind`` (default: jax's first device); H100's for an
    unknown card, so that rooflines stay comparable with the H100 results."""
    kind = jax.devices()[0].device_kind if device_kind is None else device_kind
    return next((c for c in CEILINGS if c.card in kind.upper()), DEFAULT_CEILINGS)


def median_ms(fn: Callable, input_sets: Sequence[tuple], warmup: int = 3, reps: int = 20, queued: int = 1) -> float:
    """Median wall time in ms of ``fn(*inputs)``, rotating over ``input_sets`` (defeats L2 reuse); ``queued``
    as in :func:`interleaved_median_ms`."""
    return interleaved_median_ms([fn], input_sets, warmup, reps, queued=queued)[0]


def interleaved_median_ms(
    fns: Sequence[Callable],
    input_sets: Sequence[tuple],
    warmup: int = 3,
    reps: int = 20,
    seed: int = 0,
    queued: int = 1,
) -> list[float]:
    """Median wall time in ms of each ``fns[j](*inputs)``, the functions timed in turns: each rep runs
    every function once, in a new random order (seeded, so reproducible). A drift of the card's clocks
    during the run then reaches every function alike, and no function always runs after the same one.
    Consecutive calls take the next of ``input_sets`` (defeats L2 reuse).

    ``queued`` > 1 (e.g. ``QUEUED_CALLS``): each sample issues that many calls back to back, waits once
    and counts the mean per call, so the card runs them without waiting for the host between calls: the
    card's time per call. With ``queued`` = 1 every call also pays the dispatch before its first kernel
    and the wait after its last (on the H200 0.3-0.6 ms for the mLSTM kernels at the 7B layer, whose
    kernels take 2.0 ms forward: h200_session18_2026-12-04.md).

    Give it variants of one computation: on the H200 a 0.1 ms op took 0.28-0.30 ms when each of its
    runs followed a 6 ms matmul chain, against 0.11-0.13 ms back to back (benchmarks/results/
    h200_session12_2026-12-03.md), so a small function timed in turns with heavy ones reads too slow."""
    order, calls = random.Random(seed), 0

    def timed(fn) -> float:
        nonlocal calls
        start = time.perf_counter()
        outputs = [fn(*input_sets[(calls + j) % len(input_sets)]) for j in range(queued)]
        jax.block_until_ready(outputs)
        calls += queued
        return (time.perf_counter() - start) * 1e3 / queued

    for _ in range(warmup):
        for fn in fns:
            timed(fn)
    times = [[] for _ in fns]
    for _ in range(reps):
        for j in order.sample(range(len(fns)), len(fns)):
            times[j].append(timed(fns[j]))
    return [statistics.median(t) for t in times]


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


def ceilings_line() -> str:
    """Which ceilings the rooflines use, for a report header."""
    kind = jax.devices()[0].device_kind
    c = card_ceilings(kind)
    rates = f"{c.bf16_flops / 1e12:.0f} TFLOP/s bf16 matmul, {c.copy_bytes_per_s / 1e12:.1f} TB/s copy"
    assumed = "" if c.card in kind.upper() else f", assumed: {kind!r} is not a card with known ceilings"
    return f"roofline ceilings: {c.card} ({rates}){assumed}"


def floor_ms(flops: float, min_bytes: float, ceilings: Ceilings | None = None) -> float:
    """Roofline floor on ``ceilings`` (default: this card's, :func:`card_ceilings`): the larger of compute
    time and minimum memory time, in ms."""
    ceilings = ceilings or card_ceilings()
    return max(flops / ceilings.bf16_flops, min_bytes / ceilings.copy_bytes_per_s) * 1e3


def compiled_peak_bytes(jitted: Callable, *args) -> int:
    """Arguments + outputs + temporaries of the compiled program (XLA's memory analysis)."""
    return memory_bytes(jitted.lower(*args).compile())


def memory_bytes(compiled) -> int:
    """Arguments + outputs + temporaries of a compiled program (``jax.stages.Compiled``)."""
    stats = compiled.memory_analysis()
    return int(stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes)


def versions_line() -> str:
    """Versions of python and of the installed packages a result depends on (absent ones are skipped)."""
    parts = [f"python {sys.version.split()[0]}"]
    for name in ("jax", "jaxlib", "flax", "triton", "jax_triton"):
        try:
            parts.append(f"{name} {importlib.metadata.version(name.replace('_', '-'))}")
        except importlib.metadata.PackageNotFoundError:
            pass
    return ", ".join(parts)


def environment_lines() -> list[str]:
    """Date, card and versions for a results header."""
    return [
        f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        f"- card: {jax.devices()[0].device_kind}",
        f"- {ceilings_line()}",
        f"- {versions_line()}",
        f"- command: `{' '.join(sys.argv)}`",
    ]


def parse_shape(text: str, dims: str = "BxNHxSxDHQKxDHV") -> tuple[int, ...]:
    """``"8x8x8192x256x512"`` -> ``(8, 8, 8192, 256, 512)``: as many positive ints as ``dims`` names."""
    size = dims.count("x") + 1
    try:
        shape = tuple(int(x) for x in text.lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) != size or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"shape {text!r} is not {dims} ({size} positive ints)")
    return shape


def shape_parser(doc: str, default_shape: str, dims: str = "BxNHxSxDHQKxDHV") -> argparse.ArgumentParser:
    """A benchmark script's parser, described by ``doc``'s first line: --shape (``dims``, parsed to a
    tuple of ints), --reps, --out."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--shape", default=default_shape, type=lambda text: parse_shape(text, dims), help=dims)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--out", default=None, help="markdown file for the table")
    return parser


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
