"""Times registered mLSTM kernels (forward, forward+backward) and writes a markdown table.

    python benchmarks/kernels.py --kernels chunkwise--jax,parallel--jax \
        --shapes 8x8x8192x256x512,8x16x8192x128x256 --dtype bfloat16 --modes fw,fwbw \
        [--attention] [--kernel-options chunk_size=128] [--segments 0,16] [--out benchmarks/results/NAME.md]
    python benchmarks/kernels.py --variants "chunkwise--triton;chunkwise--triton:save_states=True;chunkwise--jax"

``--variants`` (instead of ``--kernels``): ``;``-separated ``name[:key=value,...]`` entries, so that one run
times one kernel under several option sets (e.g. the Triton kernel's tuning flags); ``--kernel-options``
apply to every entry, the entry's own options win.

Shapes are BxNHxSxDHQKxDHV. Inputs: q, k, v random normal in ``--dtype``; gates i ~ 2 N(0, 1),
f ~ N(3, 1) in fp32 (as a layer passes them); three input sets rotated (tests/reference.py's draw).
"fwbw" times ``jax.vjp`` of the kernel with a random cotangent on h (gradients for q, k, v, i, f).
``--segments 0,16``: rows without document resets (0: no ``segment_ids`` passed) and with 16 documents
per row, cut at random places (seeded; the same cuts for every kernel), to compare reset and no-reset speed.

Work model (chunkwise algorithm, per token of one head, K = DHQK, V = DHV, chunk L = 128 for every
row so that TFLOP/s compares kernels on the same work; the same count as benchmarks/tune_triton_fw.py):
* forward FLOP: chunk states K_c^T (w V_c) 2 K V, inter-chunk output (s q)^T C 2 K V, and the causal
  half of the intra-chunk q k^T and P v, L (K + V): total B NH S (4 K V + L (K + V)), 3.3e11 at
  8x8x8192x256x512; forward+backward: 3 x forward (each matmul has two gradient matmuls).
* minimum bytes: forward reads q, k, v (dtype), i, f (fp32) and writes h once; forward+backward also
  reads q, k, v, i, f and the cotangent dh and writes dq, dk, dv, di, df once.
* floor = max(FLOP / matmul ceiling, bytes / copy ceiling), with the measured ceilings of the card
  (benchmarks/timing.py ``card_ceilings``: H200 790 TFLOP/s and 4.3 TB/s, H100 790 TFLOP/s and 3.0 TB/s;
  printed first); "% of floor" = floor / measured.
* peak memory: XLA's compiled memory analysis, arguments + outputs + temporaries of one call.

Times: "ms" is the median per call of ``QUEUED_CALLS`` calls issued back to back and waited for once (the
card's time, as a training step sees a kernel), and the roofline columns use it; "ms, one call waited"
times single calls, each waited for, so it adds the host's dispatch and wait (the column every result
before 2026-12-04's session 18 reported as "ms").

``--attention`` adds cuDNN causal attention (``jax.nn.dot_product_attention``) at the token count of
the first shape (B=8, S=8192 with 32 heads x 128 for the default shapes), bf16, as a reference row:
FLOP 2 B N S^2 H forward (causal half of q k^T and P v), 3.5 x that forward+backward.
A kernel that fails (out of memory, unsupported) gets its error in its row; the run goes on.
The variants of one measurement (shape, mode and segment count) are timed in turns, each repetition
running every variant once in a random order (``timing.interleaved_median_ms``), so that they compare
under the same card conditions; forward and forward+backward rows are timed apart (a light call timed
right after heavy ones reads too slow, see there).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # for benchmarks.timing

from benchmarks.timing import (  # noqa: E402
    QUEUED_CALLS,
    ceilings_line,
    compiled_peak_bytes,
    floor_ms,
    interleaved_median_ms,
    markdown_table,
    mlstm_inputs,
    parse_shape,
    write_report,
)
from xlstm_flax.kernels import get_kernel  # noqa: E402

FLOP_MODEL_CHUNK = 128
INPUT_SETS = 3
COLUMNS = [
    "kernel",
    "shape",
    "mode",
    "options",
    "ms",
    "ms, one call waited",
    "TFLOP/s",
    "floor ms",
    "% of floor",
    "GFLOP",
    "min GB",
    "peak GiB",
    "note",
]


def parse_options(text: str) -> dict:
    """``"chunk_size=128,eps=1e-6,save_states=True"`` -> ``{"chunk_size": 128, "eps": 1e-06,
    "save_states": True}``."""
    options = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"kernel option {item!r} is not key=value")
        if value in ("True", "False"):
            options[key.strip()] = value == "True"
            continue
        for cast in (int, float):
            try:
                value = cast(value)
                break
            except ValueError:
                pass
        options[key.strip()] = value
    return options


def mlstm_work(shape, dtype, mode: str) -> tuple[float, float]:
    """(FLOP, minimum bytes) of the work model in the module docstring."""
    B, NH, S, K, V = shape
    flop = B * NH * S * (4 * K * V + FLOP_MODEL_CHUNK * (K + V))
    size = jnp.dtype(dtype).itemsize
    inputs = B * NH * S * ((2 * K + V) * size + 2 * 4)
    h = B * NH * S * V * size
    if mode == "fw":
        return flop, inputs + h
    return 3 * flop, 3 * inputs + 2 * h


def attention_work(B, S, N, H, dtype, mode: str) -> tuple[float, float]:
    flop = 2 * B * N * S * S * H
    tensor = B * S * N * H * jnp.dtype(dtype).itemsize
    if mode == "fw":
        return flop, 4 * tensor
    return 3.5 * flop, 4 * tensor + 8 * tensor


def timed_function(fn: Callable, n_inputs: int, mode: str) -> Callable:
    """A jitted call taking (*inputs, dh): the forward, or the vjp with cotangent dh."""
    if mode == "fw":
        return jax.jit(lambda *args: fn(*args[:n_inputs]))
    return jax.jit(lambda *args: jax.vjp(fn, *args[:n_inputs])[1](args[n_inputs]))


class Entry(NamedTuple):
    """One row to time: ``make()`` builds the jitted function, ``work`` is its (FLOP, minimum bytes);
    rows with equal ``group`` (the same computation by different variants) are timed in turns."""

    kernel: str
    shape: str
    mode: str
    options: dict
    work: tuple[float, float]
    make: Callable[[], Callable]
    group: tuple


def roofline(ms: float, waited_ms: float, flop: float, min_bytes: float, peak_bytes: int) -> dict:
    """Throughput, roofline floor and peak memory of a call that took ``ms`` on the card (``waited_ms``
    with the host's dispatch and wait)."""
    floor = floor_ms(flop, min_bytes)
    return {
        "ms": ms,
        "ms, one call waited": waited_ms,
        "TFLOP/s": flop / ms / 1e9,
        "floor ms": floor,
        "% of floor": 100 * floor / ms,
        "GFLOP": flop / 1e9,
        "min GB": min_bytes / 1e9,
        "peak GiB": peak_bytes / 2**30,
    }


def failure_note(err: Exception) -> str:
    first_line = (str(err).strip().splitlines() or [""])[0]
    return f"failed: {type(err).__name__}: {first_line[:160]}".replace("|", "/")


def timed_rows(entries: list[Entry], input_sets) -> list[list]:
    """Table rows of ``entries`` on ``input_sets``, in their order; the entries of one ``group`` are
    timed in turns (:func:`interleaved_median_ms`), so that they compare under the same conditions. An
    entry whose function fails to build, compile or run (out of memory, unsupported) gets the error in
    its row and is not timed."""
    built, notes = {}, {}
    for index, entry in enumerate(entries):
        try:
            fn = entry.make()
            peak = compiled_peak_bytes(fn, *input_sets[0])
            jax.block_until_ready(fn(*input_sets[0]))
            built[index] = (fn, peak)
        except Exception as err:  # noqa: BLE001 -- a failing kernel is a result, not a crash
            notes[index] = failure_note(err)
    times = {}
    for group in dict.fromkeys(entry.group for entry in entries):
        members = [index for index in built if entries[index].group == group]
        if members:
            fns = [built[i][0] for i in members]
            queued = interleaved_median_ms(fns, input_sets, queued=QUEUED_CALLS)
            times.update(zip(members, zip(queued, interleaved_median_ms(fns, input_sets))))
    rows = []
    for index, entry in enumerate(entries):
        numbers = roofline(*times[index], *entry.work, built[index][1]) if index in built else {}
        opts = ",".join(f"{k}={v}" for k, v in entry.options.items()) or "-"
        cells = [numbers.get(c, "-") for c in COLUMNS[4:-1]]
        rows.append([entry.kernel, entry.shape, entry.mode, opts, *cells, notes.get(index, "")])
    print("\n".join(markdown_table(COLUMNS, rows).splitlines()[2:]), flush=True)
    return rows


def random_segment_ids(B: int, S: int, documents: int, seed: int = 0) -> np.ndarray:
    """(B, S) int32 ids of ``documents`` documents per row, cut at distinct random places."""
    rng = np.random.default_rng(seed)
    resets = np.zeros((B, S), bool)
    for b in range(B):
        resets[b, rng.choice(np.arange(1, S), size=documents - 1, replace=False)] = True
    return np.cumsum(resets, axis=1).astype(np.int32)


def mlstm_function(name, mode, options, segment_ids) -> Callable:
    """The jitted forward or vjp of registry kernel ``name`` with ``options`` (and ``segment_ids``)."""
    return timed_function(functools.partial(get_kernel(name), segment_ids=segment_ids, **options), 5, mode)


def parse_variants(text: str) -> list[tuple[str, dict]]:
    """``"a--x;a--x:k=1,f=True"`` -> ``[("a--x", {}), ("a--x", {"k": 1, "f": True})]``."""
    variants = []
    for item in filter(None, text.split(";")):
        name, _, options = item.partition(":")
        variants.append((name.strip(), parse_options(options)))
    return variants


def mlstm_rows(variants, shapes, dtype, modes, segment_counts=(0,)) -> list[list]:
    """Rows for every (registry name, options) of ``variants`` at every shape, mode and segment count;
    the variants of one (shape, mode, segment count) are timed in turns."""
    rows = []
    for shape in shapes:
        input_sets = [mlstm_inputs(shape, dtype, seed) for seed in range(INPUT_SETS)]
        label = "x".join(map(str, shape))
        entries = []
        for (name, options), mode, documents in ((v, m, d) for v in variants for m in modes for d in segment_counts):
            ids = random_segment_ids(shape[0], shape[2], documents) if documents else None
            make = functools.partial(mlstm_function, name, mode, options, ids)
            row_options = dict(options, segments=documents) if documents else options
            work = mlstm_work(shape, dtype, mode)
            entries.append(Entry(name, label, mode, row_options, work, make, group=(mode, documents)))
        rows += timed_rows(entries, input_sets)
        input_sets = None  # frees this shape's inputs before the next shape's are drawn
    return rows


def attention_rows(shape, modes) -> list[list]:
    """cuDNN causal attention, bf16, at the token count of ``shape`` with 32 heads x 128."""
    B, _, S, _, _ = shape
    N, H, dtype = 32, 128, jnp.bfloat16

    def inputs(seed):
        keys = jax.random.split(jax.random.PRNGKey(seed), 4)
        return tuple(jax.random.normal(key, (B, S, N, H), dtype) for key in keys)  # q, k, v, do

    def attention(q, k, v):
        return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn")

    work = functools.partial(attention_work, B, S, N, H, dtype)
    entries = [
        Entry(
            "attention--cudnn",
            f"{B}x{N}x{S}x{H}x{H}",
            mode,
            {},
            work(mode),
            functools.partial(timed_function, attention, 3, mode),
            group=(mode,),
        )
        for mode in modes
    ]
    return timed_rows(entries, [inputs(seed) for seed in range(INPUT_SETS)])


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernels", default="chunkwise--jax", help="comma-separated registry names")
    parser.add_argument(
        "--shapes", default="8x8x8192x256x512,8x16x8192x128x256", help="comma-separated BxNHxSxDHQKxDHV"
    )
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--modes", default="fw,fwbw", help="comma-separated subset of fw,fwbw")
    parser.add_argument("--attention", action="store_true", help="add cuDNN causal attention rows")
    parser.add_argument("--kernel-options", default="", type=parse_options, help="key=value,... for every kernel")
    parser.add_argument(
        "--variants", type=parse_variants, help="';'-separated name[:key=value,...] entries (replaces --kernels)"
    )
    parser.add_argument("--segments", default="0", help="comma-separated documents per row (0: no segment_ids)")
    parser.add_argument("--out", help="markdown file to write")
    args = parser.parse_args(argv)
    try:
        segment_counts = [int(x) for x in args.segments.split(",")]
    except ValueError:
        segment_counts = [-1]
    if min(segment_counts) < 0:
        parser.error(f"--segments must be comma-separated ints >= 0, got {args.segments!r}")
    shapes = [parse_shape(s) for s in args.shapes.split(",")]
    modes = args.modes.split(",")
    if not set(modes) <= {"fw", "fwbw"}:
        parser.error(f"--modes must be a subset of fw,fwbw, got {args.modes!r}")

    print(ceilings_line(), flush=True)
    print("| " + " | ".join(COLUMNS) + " |", flush=True)
    variants = args.variants or [(name, {}) for name in args.kernels.split(",")]
    variants = [(name, {**args.kernel_options, **options}) for name, options in variants]
    rows = mlstm_rows(variants, shapes, jnp.dtype(args.dtype), modes, segment_counts)
    if args.attention:
        rows += attention_rows(shapes[0], modes)
    return write_report("mLSTM kernel benchmark", [[markdown_table(COLUMNS, rows)]], args.out)


if __name__ == "__main__":
    main()
