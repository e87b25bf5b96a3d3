"""Tunes and times the Triton chunkwise forward (bf16) on the GPU in one run, per shape: the library
defaults, then recurrent-kernel candidates timed alone, then parallel-kernel candidates in the whole
forward (each with the fastest recurrent candidate of its intra chunk), every forward checked against
``chunkwise--jax`` on the same random data; plus cuDNN causal attention on the same token count.

    python benchmarks/tune_triton_fw.py [--quick] [--out benchmarks/results/triton_fw.md]

Counting (per forward, B NH heads, S steps, K = DHQK, V = DHV):
* FLOP: recurrent kernel 2 S K V (K^T V per chunk); parallel kernel 2 S K V (q C) plus the causal
  half of the intra-chunk q k^T and P v, S L (K + V). With L = 128 for every row, so that TFLOP/s is
  comparable across configurations: B NH S (4 K V + 128 (K + V)); 3.3e11 at the xLSTM-7B layer.
* Bytes, minimum: q, k, v read and h written once in bf16, 2 B NH S (2 K + 2 V) (1.6 GB at 7B). The
  kernels also write and read the states at every intra boundary, 4 B NH (S / L + 1) K V bytes with C in
  bf16 (the default, ``states_in_input_dtype``), twice that with fp32 states (not in the minimum).
* Floor = max(FLOP / matmul ceiling, minimum bytes / copy ceiling) of the card (benchmarks/timing.py),
  about 0.55 ms at 7B on an H100.

Correctness: h of every configuration vs ``chunkwise--jax`` h (bf16 inputs, both accumulate in fp32),
``max|h - h_jax| <= 3e-2 * max|h_jax|`` (bf16 rounding of the states and scores before the dots).
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # for benchmarks.timing

from benchmarks.timing import floor_ms, markdown_table, median_ms, mlstm_inputs, write_report  # noqa: E402
from xlstm_flax.kernels import get_kernel  # noqa: E402
from xlstm_flax.kernels.triton.chunkwise_fw import mlstm_chunkwise_fw_result, mlstm_chunkwise_states  # noqa: E402

BF16_TOL = 3e-2
FLOP_MODEL_CHUNK = 128

SHAPES = {  # name: (B, NH, S, DHQK, DHV)
    "7b": (8, 8, 8192, 256, 512),
    "nh16": (8, 16, 8192, 128, 256),
}


def _recurrent(intra, inter, dhqk, dhv, warps, stages):
    return dict(
        chunk_size_intra=intra,
        chunk_size_inter=inter,
        siz_b_DHQK_inter=dhqk,
        siz_b_DHV_inter=dhv,
        num_warps_inter=warps,
        num_stages_inter=stages,
    )


def _parallel(intra, rows, cols, dhqk, dhv, warps, stages):
    return dict(
        chunk_size_intra=intra,
        siz_b_L_parallel=rows,
        siz_b_L_loop=cols,
        siz_b_DH_loop=dhqk,
        siz_b_DH_parallel=dhv,
        num_warps_intra=warps,
        num_stages_intra=stages,
    )


# Candidates per shape. The recurrent kernel is timed alone (mlstm_chunkwise_states); each parallel
# candidate then runs in the whole forward with the fastest recurrent candidate of its intra chunk.
# (chunk_size_inter, state tile DHQK x DHV, warps, stages) swept at both shapes: smaller inter chunks
# (more pipeline stages and programs per SM) and larger state tiles (fewer re-reads of k and v from L2).
RECURRENT_SWEEP = [
    (128, 128, 64, 4, 2),  # the 16-bit default for DHQK >= 128 since C and n have programs of their own
    (128, 64, 64, 4, 2),
    (64, 128, 64, 4, 3),
    (128, 64, 64, 4, 3),
    (64, 64, 64, 4, 4),
    (128, 128, 64, 4, 3),
    (128, 64, 128, 4, 3),
    (128, 128, 128, 8, 2),
    (128, 128, 128, 8, 3),
    (64, 128, 128, 8, 3),
    (64, 128, 128, 8, 4),
    (64, 128, 256, 8, 3),
    (64, 256, 128, 8, 3),
]
RECURRENT = {
    "7b": [_recurrent(256, 256, 64, 64, 4, 2), _recurrent(256, 256, 64, 128, 8, 2), _recurrent(256, 256, 64, 64, 4, 3)]
    + [_recurrent(256, *candidate) for candidate in RECURRENT_SWEEP],
    "nh16": [
        _recurrent(128, 128, 64, 64, 4, 2),
        _recurrent(256, 128, 64, 64, 4, 2),
        _recurrent(256, 128, 128, 64, 8, 2),
        _recurrent(256, 128, 128, 128, 8, 2),
        _recurrent(256, 64, 64, 128, 4, 3),
        _recurrent(512, 128, 128, 128, 8, 2),
    ]
    + [_recurrent(256, *candidate) for candidate in RECURRENT_SWEEP if candidate[1] <= 128],
}
PARALLEL = {
    "7b": [
        _parallel(256, 128, 64, 64, 256, 8, 2),
        _parallel(256, 128, 64, 64, 256, 8, 3),
        _parallel(256, 128, 128, 64, 256, 8, 2),
        _parallel(256, 64, 64, 64, 512, 8, 2),
        _parallel(256, 128, 64, 128, 256, 8, 2),
        _parallel(256, 64, 64, 64, 256, 4, 2),
    ],
    "nh16": [
        _parallel(128, 64, 64, 64, 128, 4, 2),
        _parallel(128, 128, 64, 128, 128, 8, 2),
        _parallel(256, 128, 64, 64, 128, 8, 2),
        _parallel(256, 128, 64, 128, 128, 8, 2),
        _parallel(256, 64, 64, 128, 256, 8, 2),
        _parallel(256, 128, 64, 128, 256, 8, 2),
        _parallel(512, 128, 64, 128, 128, 8, 2),
        _parallel(128, 64, 64, 64, 256, 8, 2),
    ],
}


def flops(B, NH, S, K, V) -> float:
    return B * NH * S * (4 * K * V + FLOP_MODEL_CHUNK * (K + V))


def min_bytes(B, NH, S, K, V) -> float:
    return 2 * B * NH * S * (2 * K + 2 * V)


def _forward(**tuning):
    @jax.jit
    def fw(q, k, v, i, f):
        result = mlstm_chunkwise_fw_result(q, k, v, i, f, **tuning)
        return result.matH, result.vecDen, result.vecM

    return fw


def _states(**tuning):
    return jax.jit(lambda q, k, v, i, f: mlstm_chunkwise_states(k, v, i, f, **tuning))


def _rel_err(got, want) -> float:
    got, want = got.astype(jnp.float32), want.astype(jnp.float32)
    return float(jnp.max(jnp.abs(got - want)) / jnp.max(jnp.abs(want)))


SHORT_NAMES = {  # option -> column label (see LEGEND)
    "chunk_size_intra": "intra",
    "chunk_size_inter": "inter",
    "siz_b_DHQK_inter": "rQ",
    "siz_b_DHV_inter": "rV",
    "num_warps_inter": "rw",
    "num_stages_inter": "rs",
    "siz_b_L_parallel": "pLQ",
    "siz_b_L_loop": "pLK",
    "siz_b_DH_loop": "pDQ",
    "siz_b_DH_parallel": "pDV",
    "num_warps_intra": "pw",
    "num_stages_intra": "ps",
}
LEGEND = (
    "config: intra/inter = chunk_size_intra/inter; recurrent kernel rQ x rV = siz_b_DHQK_inter x "
    "siz_b_DHV_inter, rw/rs = its warps/stages; parallel kernel pLQ/pLK = siz_b_L_parallel/loop, "
    "pDQ/pDV = siz_b_DH_loop/parallel, pw/ps = its warps/stages"
)


def _label(tuning) -> str:
    return " ".join(f"{SHORT_NAMES[k]}={v}" for k, v in tuning.items()) or "defaults"


class ShapeTuner:
    """Times candidates of one shape on two rotated random input sets; collects table rows."""

    def __init__(self, name, reps):
        self.name, self.reps = name, reps
        B, NH, S, K, V = SHAPES[name]
        self.flops = flops(B, NH, S, K, V)
        self.floor = floor_ms(self.flops, min_bytes(B, NH, S, K, V))
        self.inputs = [mlstm_inputs((B, NH, S, K, V), jnp.bfloat16, seed)[:5] for seed in (0, 1)]
        self.want = jax.jit(get_kernel("chunkwise--jax"))(*self.inputs[0])
        self.rows = []
        self.best = None  # (ms, tuning) of the fastest correct whole forward

    def _timed(self, kernel, label, fn):
        try:
            return fn()
        except Exception as exc:  # a candidate the GPU cannot run (e.g. too much shared memory)
            self.rows.append([self.name, kernel, label, "failed", "-", "-", f"{type(exc).__name__}: {str(exc)[:80]}"])
            print(" | ".join(self.rows[-1]), flush=True)
            return None

    def reference_row(self):
        ms = median_ms(jax.jit(get_kernel("chunkwise--jax")), self.inputs, reps=self.reps)
        self.rows.append(
            [
                self.name,
                "chunkwise--jax",
                "chunk 64",
                f"{ms:.3f}",
                f"{self.flops / ms / 1e9:.1f}",
                f"{100 * self.floor / ms:.0f}",
                "reference",
            ]
        )

    def recurrent(self, tuning) -> float | None:
        ms = self._timed("recurrent", _label(tuning), lambda: median_ms(_states(**tuning), self.inputs, reps=self.reps))
        if ms is not None:
            self.rows.append([self.name, "recurrent", _label(tuning), f"{ms:.3f}", "-", "-", "-"])
            print(" | ".join(self.rows[-1]), flush=True)
        return ms

    def forward(self, tuning, label=None) -> float | None:
        fw = _forward(**tuning)
        label = label or _label(tuning)
        err = self._timed("forward", label, lambda: _rel_err(fw(*self.inputs[0])[0], self.want))
        if err is None:
            return None
        ms = median_ms(fw, self.inputs, reps=self.reps)
        ok = err <= BF16_TOL
        self.rows.append(
            [
                self.name,
                "forward",
                label,
                f"{ms:.3f}",
                f"{self.flops / ms / 1e9:.1f}",
                f"{100 * self.floor / ms:.0f}",
                f"{err:.1e} {'ok' if ok else 'WRONG'}",
            ]
        )
        print(" | ".join(self.rows[-1]), flush=True)
        if ok and (self.best is None or ms < self.best[0]):
            self.best = (ms, tuning)
        return ms


def tune_shape(name, reps, quick, recurrent_only):
    tuner = ShapeTuner(name, reps)
    tuner.reference_row()
    tuner.forward({}, "library defaults")
    if quick:
        return tuner
    fastest_recurrent = {}  # intra chunk -> (ms, tuning)
    for tuning in RECURRENT[name]:
        ms = tuner.recurrent(tuning)
        intra = tuning["chunk_size_intra"]
        if ms is not None and ms < fastest_recurrent.get(intra, (float("inf"),))[0]:
            fastest_recurrent[intra] = (ms, tuning)
    for tuning in [] if recurrent_only else PARALLEL[name]:
        recurrent = fastest_recurrent.get(tuning["chunk_size_intra"], (None, {}))[1]
        tuner.forward({**recurrent, **tuning})
    return tuner


def cudnn_attention_ms(reps) -> float:
    """jax.nn.dot_product_attention, cuDNN, causal, B=8, S=8192, 32 heads x 128, bf16, forward."""
    keys = jax.random.split(jax.random.PRNGKey(1), 6)
    sets = [
        tuple(jax.random.normal(kk, (8, 8192, 32, 128), jnp.bfloat16) for kk in keys[3 * n : 3 * n + 3])
        for n in range(2)
    ]
    attn = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn"))
    return median_ms(attn, sets, reps=reps)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="only the library defaults per shape")
    parser.add_argument("--recurrent-only", action="store_true", help="defaults and recurrent candidates only")
    parser.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated names of SHAPES")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--out", default=None, help="markdown file for the results table")
    args = parser.parse_args(argv)
    rows, notes = [], []
    for name in args.shapes.split(","):
        tuner = tune_shape(name, args.reps, args.quick, args.recurrent_only)
        rows += tuner.rows
        best = f"best {tuner.best[0]:.3f} ms ({_label(tuner.best[1])})" if tuner.best else "no candidate passed"
        notes.append(f"- {name} (B, NH, S, DHQK, DHV) = {SHAPES[name]}: floor {tuner.floor:.3f} ms, {best}")
        del tuner
    attention = cudnn_attention_ms(args.reps)
    notes.append(
        f"- cuDNN causal attention (jax.nn.dot_product_attention), B=8, S=8192, 32 x 128 bf16, "
        f"forward: {attention:.3f} ms"
    )
    columns = ["shape", "kernel", "config", "ms", "TFLOP/s", "% of floor", "max rel err vs jax"]
    write_report("Triton chunkwise forward, bf16", [notes, [markdown_table(columns, rows)], [LEGEND]], args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
