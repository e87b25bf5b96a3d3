"""sLSTM benchmark: one layer (scan vs fused Triton kernel), the all-mLSTM vs xLSTM[7:1] training
step, and one decoding step of an sLSTM vs an mLSTM layer of the same width; writes markdown.

    python benchmarks/slstm.py [--tiny] [--kernels recurrent--jax,recurrent--triton] [--splits 1,4,8]
        [--tunings "split=4;split=8,num_warps=8"] [--skip kernel,layer,parts,train,decode] [--loss-chunk 1024]
        [--out FILE]

Full size (one H100/H200): sLSTM layer at B=16, S=2048, D=1024, 4 heads, bf16 compute with fp32 params
(the kernel alone on bf16 gate inputs with an fp32 bias, as the layer calls it, and the whole layer: gate
projections, conv, group norm),
forward and forward+backward; each fused Triton kernel alone (``parts``: the forward without and with its
stored gates, the backward with the recurrent kernel's gradient from programs that follow its walk and
from a kernel after it, that kernel alone; timed in turns); training step (forward, backward,
AdamW update) of the "350m" and "350m-xlstm71" presets at B=16, S=2048, bf16 compute, sLSTM kernel "auto"
(the mLSTM blocks use their default kernel), the whole-sequence loss unless ``--loss-chunk`` gives the
recipes' chunk; decoding step at B=16, D=1024: one jitted call (which the host's dispatch can dominate)
and per step of a 64-step scan (the device's time, as generation runs it) with its kernel launches.
``--tiny`` runs the same at B=2, S=16, D=64 (layer), the "tiny" preset with and without its sLSTM block
(step), on any machine.
``--splits``: extra kernel rows of "recurrent--triton" with its ``split`` option (programs per head, tiles
of min(64, DH / split) columns); ``--tunings``: extra kernel rows of "recurrent--triton" with any of its
tuning keywords (sets separated by ";", keywords by ","; the rest at their defaults). The training step is
benchmarks/model.py's (the library's ``make_steps``), its MFU from ``xlstm_flax.flops`` (6N plus the mLSTM
recurrence, against the card's dense bf16 peak; "-" off GPU). A row that fails (no GPU for Triton, out of
memory) holds its error.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import os
import sys

import jax
import jax.numpy as jnp
from flax import nnx

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # for benchmarks.*

from benchmarks.kernels import failure_note, parse_options  # noqa: E402
from benchmarks.model import COLUMNS, kernels_per_step, train_row  # noqa: E402
from benchmarks.timing import interleaved_median_ms, markdown_table, median_ms, write_report  # noqa: E402
from xlstm_flax.kernels.slstm import (  # noqa: E402
    NUM_GATES,
    GateInputs,
    States,
    get_slstm_kernel,
    initial_states,
    triton_launch,
)
from xlstm_flax.kernels.slstm.common import Dims  # noqa: E402
from xlstm_flax.layers import mLSTMLayer, mLSTMLayerConfig, sLSTMLayer, sLSTMLayerConfig  # noqa: E402
from xlstm_flax.presets import PRESETS  # noqa: E402

TRAIN_STEPS, TRAIN_WARMUP = 10, 2
INPUT_SETS = 3
DECODE_STEPS = 64  # steps per scanned decode call
FULL = dict(B=16, S=2048, D=1024, heads=4, models=("350m", "350m-xlstm71"))
TINY = dict(B=2, S=16, D=64, heads=2, models=("tiny-mlstm", "tiny"))


def _try(run, *args) -> tuple:
    """(``run(*args)``, "") or ("-", the error)."""
    try:
        return run(*args), ""
    except Exception as err:  # noqa: BLE001 -- a failing row is a result, not a crash
        return "-", failure_note(err)


def _timed(fn, mode: str, n_inputs: int):
    """A jitted forward, or the vjp of the forward with the last argument as cotangent."""
    if mode == "fw":
        return jax.jit(lambda *a: fn(*a[:n_inputs]))
    return jax.jit(lambda *a: jax.vjp(fn, *a[:n_inputs])[1](a[n_inputs]))


def split_options(splits, DH: int) -> list[dict]:
    """Triton options for each split > 1: tiles of min(64, DH / split) columns."""
    tile = [min(64, max(16, DH // n)) for n in splits]
    return [dict(split=n, block_dh=t, block_k=t) for n, t in zip(splits, tile) if n > 1]


def parse_tunings(text: str) -> list[dict]:
    """ "split=4;split=8,num_warps=8" -> [{"split": 4}, {"split": 8, "num_warps": 8}]."""
    return [parse_options(group) for group in filter(None, text.split(";"))]


def _kernel_ms(name: str, options: dict, mode: str, input_sets) -> float:
    kernel = get_slstm_kernel(name)
    return median_ms(_timed(lambda gates, bias, r: kernel(gates, bias, r, **options)[0], mode, 3), input_sets)


def kernel_inputs(seed: int, B, S, NH, DH) -> tuple:
    """One random input set of the recurrence: the gate inputs (B, S, NH, DH) bf16 ~ N(0, 1), the bias
    (4, NH, DH) fp32 ~ N(0, 1), R (4, NH, DH, DH) bf16 ~ N(0, 1 / DH), a cotangent of h (B, S, NH, DH) fp32
    ~ N(0, 1)."""
    ks = jax.random.split(jax.random.key(seed), 4)
    gates = GateInputs(*jax.random.normal(ks[0], (NUM_GATES, B, S, NH, DH), jnp.bfloat16))
    bias = jax.random.normal(ks[3], (NUM_GATES, NH, DH), jnp.float32)
    recurrent = (jax.random.normal(ks[1], (NUM_GATES, NH, DH, DH)) / DH**0.5).astype(jnp.bfloat16)
    return gates, bias, recurrent, jax.random.normal(ks[2], (B, S, NH, DH), jnp.float32)


def kernel_rows(kernels: list[tuple[str, dict]], B, S, D, heads) -> list[list]:
    """The recurrence alone on :func:`kernel_inputs`; ``kernels`` are (name, options) pairs."""
    input_sets = [kernel_inputs(seed, B, S, heads, D // heads) for seed in range(INPUT_SETS)]
    rows = []
    for (name, options), mode in itertools.product(kernels, ("fw", "fwbw")):
        label = name + "".join(f" {k}={v}" for k, v in options.items())
        rows.append(["kernel", label, mode, *_try(_kernel_ms, name, options, mode, input_sets)])
        print(rows[-1], flush=True)
    return rows


def _part_fns(dims: Dims, tuning, backward_tuning, followed_tuning=None) -> dict:
    """The fused kernels, {name: (their tuning or None, a function of an input set (gates, bias, R, g,
    history, dh, dg))}: the forward with ``tuning``; the backward with ``backward_tuning``, its dR from the
    dR kernel after the walk, and with ``followed_tuning`` (if given) from programs that follow it; the dR
    kernel alone (which passes dg on as the bf16 gate inputs' cotangents)."""
    initial = initial_states(dims.B, dims.NH, dims.DH)
    zeros = States(*(jnp.zeros_like(initial.c),) * 4)
    after = dataclasses.replace(backward_tuning, follow_dr=False)

    def forward(gates, bias, r, *_, store_gates=True):
        return triton_launch.slstm_fw(gates, bias, r, initial, dims, tuning, store_gates=store_gates)

    def backward(walk_tuning):
        return lambda gates, bias, r, g, history, dh, dg: triton_launch.slstm_bw(
            g, r, history, dh, zeros, dims, walk_tuning, gates.i.dtype
        )

    fns = {
        "fw, no gates stored": (tuning, functools.partial(forward, store_gates=False)),
        "fw, gates stored": (tuning, forward),
        "bw, dR after the walk": (after, backward(after)),
        "dR": (
            None,
            lambda gates, bias, r, g, history, dh, dg: triton_launch.slstm_dr(history.h, dg, r, dims, gates.i.dtype),
        ),
    }
    if followed_tuning is not None:
        fns["bw, dR followers"] = (followed_tuning, backward(followed_tuning))
    return fns


def _part_inputs(fns: dict, dims: Dims) -> list[tuple]:
    """:func:`kernel_inputs` (gates, bias, R, dh) with the forward's g and history, and dg = tanh(g)."""
    forward = jax.jit(fns["fw, gates stored"][1])
    sets = []
    for seed in range(INPUT_SETS):
        gates, bias, r, dh = kernel_inputs(seed, *dims)
        g, history = forward(gates, bias, r)
        sets.append((gates, bias, r, g, history, dh, jnp.tanh(g)))
    return sets


def _followed_tuning(dims: Dims, options: dict):
    """The backward's tuning with dR followers and ``options``, or None where they cannot run."""
    try:
        return triton_launch.resolve_tuning(
            "bench", dims, recurrent_dtype=jnp.bfloat16, backward=True, **{**options, "follow_dr": True}
        )
    except ValueError:
        return None


def parts_rows(tunings: list[dict], B, S, D, heads) -> list[list]:
    """Each fused kernel alone (:func:`_part_fns`; the default tunings, then each of ``tunings``), the
    kernels of one tuning timed in turns."""
    dims = Dims(B, S, heads, D // heads)
    rows = []
    for options in [{}, *tunings]:
        try:
            walk_tunings = [  # forward, backward
                triton_launch.resolve_tuning("bench", dims, recurrent_dtype=jnp.bfloat16, backward=b, **options)
                for b in (False, True)
            ]
            fns = _part_fns(dims, *walk_tunings, _followed_tuning(dims, options))
            times = interleaved_median_ms([jax.jit(fn) for _, fn in fns.values()], _part_inputs(fns, dims))
        except Exception as err:  # noqa: BLE001 -- no GPU: the row holds the error
            rows.append([str(options), "all", "-", failure_note(err)])
            continue
        for (part, (tuning, _)), ms in zip(fns.items(), times):
            label = "-" if tuning is None else " ".join(f"{k}={v}" for k, v in dataclasses.asdict(tuning).items())
            rows.append([label, part, ms, ""])
            print(rows[-1], flush=True)
    return rows


def _layer_ms(name: str, D: int, heads: int, mode: str, input_sets) -> float:
    layer = sLSTMLayer(
        D, sLSTMLayerConfig(num_heads=heads, kernel=name), num_blocks=1, dtype=jnp.bfloat16, rngs=nnx.Rngs(0)
    )
    graphdef, params = nnx.split(layer)
    fn = _timed(lambda params, x: nnx.merge(graphdef, params)(x)[0], mode, 2)
    return median_ms(lambda x, dy: fn(params, x, dy), input_sets)


def layer_rows(kernel_names, B, S, D, heads) -> list[list]:
    """The whole sLSTM layer, bf16 compute, fp32 params; fw+bw gives gradients of x and the params."""
    keys = [jax.random.split(jax.random.key(seed)) for seed in range(INPUT_SETS)]
    input_sets = [tuple(jax.random.normal(k, (B, S, D), jnp.bfloat16) for k in pair) for pair in keys]
    rows = []
    for name, mode in itertools.product(kernel_names, ("fw", "fwbw")):
        rows.append(["layer", name, mode, *_try(_layer_ms, name, D, heads, mode, input_sets)])
        print(rows[-1], flush=True)
    return rows


def _model_config(name: str):
    if name == "tiny-mlstm":
        return dataclasses.replace(PRESETS["tiny"], slstm_at=())
    return PRESETS[name]


def train_step_rows(model_names, B, S, loss_chunk: int = 0) -> list[list]:
    """Forward, backward and AdamW update of a preset (the library's training step, bf16 compute, fp32
    params, the loss ``loss_chunk`` positions at a time, 0: whole-sequence), timed by benchmarks/model.py."""
    rows = []
    for name in model_names:
        config = dataclasses.replace(_model_config(name), compute_dtype="bfloat16")
        result, note = _try(train_row, config, B, S, TRAIN_STEPS, TRAIN_WARMUP, 0, loss_chunk)
        if note:
            rows.append([name, config.slstm_at, "-", "-", "-", note])
        else:
            row = dict(zip(COLUMNS, result[0]))  # the row (train_row also returns profile lines)
            ms, tokens_per_s, mfu = row["ms"], row["tokens/s"], row["MFU %"]
            mfu = mfu if mfu == "-" else f"{mfu:.1f}%"
            rows.append([name, config.slstm_at, ms, f"{tokens_per_s / 1e3:.1f}k", mfu, ""])
        print(rows[-1], flush=True)
    return rows


def _decode_times(layer, B: int, D: int) -> list:
    """[ms of one jitted ``layer.step`` call (the host's dispatch included), ms per step of a
    :data:`DECODE_STEPS`-step ``lax.scan`` of it (the device's time, as generation runs it), kernel
    launches per scanned step]; x random (B, D) bf16, a fresh state."""
    graphdef, params = nnx.split(layer)
    state = layer.init_state(B)

    def steps(params, xs, state):
        model = nnx.merge(graphdef, params)

        def one(state, x):
            y, state = model.step(x, state)
            return state, y

        return jax.lax.scan(one, state, xs)

    step = jax.jit(lambda params, x, state: nnx.merge(graphdef, params).step(x, state))
    sets = [jax.random.normal(jax.random.key(s), (DECODE_STEPS, B, D), jnp.bfloat16) for s in range(INPUT_SETS)]
    scanned = jax.jit(steps).lower(params, sets[0], state).compile()  # compiled once: timed and counted
    call_ms = median_ms(lambda xs: step(params, xs[0], state), [(xs,) for xs in sets], reps=50)
    scan_ms = median_ms(lambda xs: scanned(params, xs, state), [(xs,) for xs in sets], reps=20)
    return [call_ms, scan_ms / DECODE_STEPS, kernels_per_step(scanned.as_text())]


def decode_rows(B, D, heads) -> list[list]:
    """One token through ``layer.step``, bf16 compute (fp32 params): alone, and per step of a scan."""
    common = dict(num_blocks=1, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    layers = {
        "sLSTM": sLSTMLayer(D, sLSTMLayerConfig(num_heads=heads), **common),
        "mLSTM": mLSTMLayer(D, mLSTMLayerConfig(num_heads=heads), **common),
    }
    rows = []
    for name, layer in layers.items():
        times, note = _try(_decode_times, layer, B, D)
        rows.append([name, B, D, *(times if not note else ["-"] * 3), note])
        print(rows[-1], flush=True)
    return rows


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny sizes that run on a CPU")
    parser.add_argument("--kernels", default="recurrent--jax,recurrent--triton", help="sLSTM kernel names")
    parser.add_argument("--splits", default="", help="comma-separated Triton split values for extra kernel rows")
    parser.add_argument("--tunings", default="", help='extra Triton kernel rows, e.g. "split=4;split=8,num_warps=8"')
    parser.add_argument("--skip", default="", help="comma-separated sections to skip: kernel,layer,parts,train,decode")
    parser.add_argument("--loss-chunk", type=int, default=0, help="training steps' loss chunk (0: whole sequence)")
    parser.add_argument("--out", help="markdown file to write")
    args = parser.parse_args(argv)
    tunings = parse_tunings(args.tunings)
    size = TINY if args.tiny else FULL
    B, S, D, heads = size["B"], size["S"], size["D"], size["heads"]
    names, skip = args.kernels.split(","), set(filter(None, args.skip.split(",")))
    sections = []
    if not {"kernel", "layer"} <= skip:
        splits = [int(n) for n in filter(None, args.splits.split(","))]
        extra = split_options(splits, D // heads) + tunings
        kernels = [(n, {}) for n in names] + [("recurrent--triton", o) for o in extra]
        rows = ([] if "kernel" in skip else kernel_rows(kernels, B, S, D, heads)) + (
            [] if "layer" in skip else layer_rows(names, B, S, D, heads)
        )
        sections.append(
            [
                f"## sLSTM at B={B}, S={S}, D={D}, {heads} heads (ms, median)",
                "",
                markdown_table(["what", "kernel", "mode", "ms", "note"], rows),
            ]
        )
    if "parts" not in skip:
        sections.append(
            [
                f"## Each fused kernel alone at B={B}, S={S}, D={D}, {heads} heads (ms, median)",
                "",
                markdown_table(["tuning", "kernel", "ms", "note"], parts_rows(tunings, B, S, D, heads)),
            ]
        )
    if "train" not in skip:
        rows = train_step_rows(size["models"], B, S, args.loss_chunk)
        loss = f"loss chunk {args.loss_chunk}" if args.loss_chunk else "whole-sequence loss"
        sections.append(
            [
                f"## Training step at B={B}, S={S} (bf16 compute, fp32 params, AdamW, {loss})",
                "",
                markdown_table(["model", "sLSTM at", "step ms", "tokens/s", "MFU", "note"], rows),
            ]
        )
    if "decode" not in skip:
        sections.append(
            [
                f"## Decoding step (one token, B={B})",
                "",
                markdown_table(
                    ["layer", "B", "D", "one call ms", f"ms per step of {DECODE_STEPS}", "kernels per step", "note"],
                    decode_rows(B, D, heads),
                ),
            ]
        )
    return write_report("sLSTM benchmark", sections, args.out)


if __name__ == "__main__":
    main()
