"""Experiment (issue 10): the forward chunk-state walk with k and v loaded through TMA tensor descriptors.

The library's state walk (``chunkwise_fw_kernels._state_walk``: one program per 128 x 64 tile of C walks
the 128-step chunks in order) loads k and v with pointer loads; Nsight Compute showed its warps waiting on
those loads at the loop head (benchmarks/results/h200_recurrent_split_2026-12-03.md). ``walk_tma`` is the
same walk with k and v read through host-side TMA descriptors (jax-triton's ``TensorDescriptor``, 2-D over
(B NH S, DH), so the out-of-range columns come back as zeros without masks). Both walk C only (the
library's kernel adds programs for n and m). Timing-only flags drop one stage of the TMA walk: the
weighting of v, the dot (replaced by two sums that keep the loads alive), the chunk-state stores.

The script checks every variant's states against the pointer walk (max |difference|, printed: 0 for the
full walks) and prints median wall times of 10 calls after 3, taken in three rounds over the variants.

Result (H200, benchmarks/results/h200_session17_2026-12-04.md): no gain. 7B layer shape, bf16: pointer walk
0.99-1.02 ms, TMA with 2 / 3 / 4 stages 1.04 / 1.05 / 0.99-1.02 ms (identical states); without the
chunk-state stores 0.85 ms.

    python benchmarks/states_tma.py            # on a GPU with jax-triton
    TINY=1 LOWER=1 python benchmarks/states_tma.py   # CUDA lowering of every variant, on any machine
"""

import functools
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import triton
import triton.language as tl

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from xlstm_flax.kernels.triton import chunkwise_fw_kernels as K  # noqa: E402
from xlstm_flax.kernels.triton.compat import import_jax_triton  # noqa: E402
from xlstm_flax.kernels.triton.launch import triton_call  # noqa: E402
from xlstm_flax.kernels.triton.shared import chunk_log_forget_cumsum  # noqa: E402

jt = import_jax_triton()
_post_init = jt.triton_lib.CompilationResult.__post_init__


def _fill_im2col(self):
    """jax-triton 0.4.1 requires an ``is_im2col`` key that Triton 3.6's descriptor metadata lacks."""
    for meta in self.tensordesc_meta or ():
        meta.setdefault("is_im2col", False)
    _post_init(self)


jt.triton_lib.CompilationResult.__post_init__ = _fill_im2col


# fmt: off
@triton.jit
def walk_ptr(matK, matV, vecB, vecI, matC_initial, scaM_initial, matC_all, matC_last, S: tl.constexpr,
             DHQK: tl.constexpr, DHV: tl.constexpr, NC: tl.constexpr, L_INTRA: tl.constexpr, L_INTER: tl.constexpr,
             BLOCK_DHQK: tl.constexpr, BLOCK_DHV: tl.constexpr):
    """The library's C walk (pointer loads), without n programs."""
    K._state_walk(matK, matV, vecB, vecI, vecI, matC_initial, scaM_initial, matC_all, matC_last, S, DHQK, DHV, NC,
                  L_INTRA, L_INTER, BLOCK_DHQK, BLOCK_DHV, "tf32", False)


@triton.jit
def _first_tile(matC_initial, scaM_initial, matC_all, pid_q, pid_v, bh, DHQK: tl.constexpr, DHV: tl.constexpr,
                NC: tl.constexpr, BLOCK_DHQK: tl.constexpr, BLOCK_DHV: tl.constexpr):
    """The program's C tile (offsets, mask), its initial value (also stored as chunk state 0) and m."""
    offs_c, mask_c = K.state_tile(pid_q, pid_v, DHQK, DHV, BLOCK_DHQK, BLOCK_DHV)[4:]
    matC = tl.load(matC_initial + bh * DHQK * DHV + offs_c, mask=mask_c, other=0.0)
    tl.store(matC_all + bh * (NC + 1) * DHQK * DHV + offs_c, matC.to(matC_all.dtype.element_ty), mask=mask_c)
    return offs_c, mask_c, matC, tl.load(scaM_initial + bh)


@triton.jit
def walk_tma(descK, descV, vecB, vecI, matC_initial, scaM_initial, matC_all, matC_last, S: tl.constexpr,
             DHQK: tl.constexpr, DHV: tl.constexpr, NC: tl.constexpr, L_INTRA: tl.constexpr, L_INTER: tl.constexpr,
             BLOCK_DHQK: tl.constexpr, BLOCK_DHV: tl.constexpr, WEIGHT: tl.constexpr = True,
             DOT: tl.constexpr = True, STORE: tl.constexpr = True):
    """The same walk, k and v through TMA descriptors; WEIGHT / DOT / STORE off: timing only."""
    pid_q, pid_v, bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    offs_c, mask_c, matC, scaM = _first_tile(matC_initial, scaM_initial, matC_all, pid_q, pid_v, bh, DHQK, DHV, NC,
                                             BLOCK_DHQK, BLOCK_DHV)
    for step in range(S // L_INTER):
        t0 = step * L_INTER
        gates = bh * S + t0
        scaM, decay, weight = K._chunk_gates(vecB, vecI, vecI, gates, t0 % L_INTRA != 0, scaM, L_INTER, False)
        k = descK.load([(bh * S + t0).to(tl.int32), pid_q * BLOCK_DHQK])
        v = descV.load([(bh * S + t0).to(tl.int32), pid_v * BLOCK_DHV])
        weighted_v = (v * weight[:, None]).to(v.dtype) if WEIGHT else v
        if DOT:
            matC = decay * matC + tl.dot(tl.trans(k), weighted_v)
        else:
            matC = (decay * matC + tl.sum(k.to(tl.float32), axis=0)[:, None]
                    + tl.sum(weighted_v.to(tl.float32), axis=0)[None, :])
        if STORE and (t0 + L_INTER) % L_INTRA == 0:
            index = bh * (NC + 1) + (t0 + L_INTER) // L_INTRA
            tl.store(matC_all + index * DHQK * DHV + offs_c, matC.to(matC_all.dtype.element_ty), mask=mask_c)
    tl.store(matC_last + bh * DHQK * DHV + offs_c, matC, mask=mask_c)
# fmt: on


TINY = os.environ.get("TINY") == "1"
B, NH, S, DHQK, DHV = (1, 2, 512, 256, 512) if TINY else (8, 8, 8192, 256, 512)
L_INTRA, L_INTER, BQ, BV = 256, 128, 128, 64  # the library's bf16 defaults at the 7B head dims
NC = S // L_INTRA
OUT_SHAPE = (
    jax.ShapeDtypeStruct((B, NH, NC + 1, DHQK, DHV), jnp.bfloat16),
    jax.ShapeDtypeStruct((B, NH, DHQK, DHV), jnp.float32),
)
GRID = (DHQK // BQ, DHV // BV, B * NH)
SIZES = dict(S=S, DHQK=DHQK, DHV=DHV, NC=NC, L_INTRA=L_INTRA, L_INTER=L_INTER, BLOCK_DHQK=BQ, BLOCK_DHV=BV)


def pointer_walk(k, v, vecB, i, C0, m0, *, stages, warps):
    return triton_call(k, v, vecB, i, C0, m0, kernel=walk_ptr, out_shape=OUT_SHAPE, grid=GRID, num_warps=warps,
                       num_stages=stages, **SIZES)  # fmt: skip


def tma_walk(k, v, vecB, i, C0, m0, *, stages, warps, **flags):
    dk = jt.TensorDescriptor.from_array(k.reshape(B * NH * S, DHQK), (L_INTER, BQ))
    dv = jt.TensorDescriptor.from_array(v.reshape(B * NH * S, DHV), (L_INTER, BV))
    return triton_call(dk, dv, vecB, i, C0, m0, kernel=walk_tma, out_shape=OUT_SHAPE, grid=GRID, num_warps=warps,
                       num_stages=stages, **SIZES, **flags)  # fmt: skip


# name: (walk, stages, warps); the first is the reference of the differences
VARIANTS = {
    "pointer loads, 4 warps, 2 stages (library)": (pointer_walk, 2, 4),
    "pointer loads, 3 stages": (pointer_walk, 3, 4),
    "TMA, 2 stages": (tma_walk, 2, 4),
    "TMA, 3 stages": (tma_walk, 3, 4),
    "TMA, 4 stages": (tma_walk, 4, 4),
    "TMA, 8 warps, 3 stages": (tma_walk, 3, 8),
    "TMA, 4 stages, no weighting of v (timing only)": (functools.partial(tma_walk, WEIGHT=False), 4, 4),
    "TMA, 4 stages, sums instead of the dot (timing only)": (functools.partial(tma_walk, DOT=False), 4, 4),
    "TMA, 4 stages, no chunk-state stores (timing only)": (functools.partial(tma_walk, STORE=False), 4, 4),
    "TMA, 4 stages, no weighting, sums instead of the dot, no stores (timing only)": (
        functools.partial(tma_walk, WEIGHT=False, DOT=False, STORE=False),
        4,
        4,
    ),  # noqa: E501
}


def inputs():
    """Random bf16 k, v (B, NH, S, DH); fp32 gates (forget pre-activations around 3) and zero initial state."""
    keys = jax.random.split(jax.random.key(0), 4)
    k = jax.random.normal(keys[0], (B, NH, S, DHQK), jnp.bfloat16)
    v = jax.random.normal(keys[1], (B, NH, S, DHV), jnp.bfloat16)
    i = jax.random.normal(keys[2], (B, NH, S), jnp.float32)
    f = 3.0 + jax.random.normal(keys[3], (B, NH, S), jnp.float32)
    C0, m0 = jnp.zeros((B, NH, DHQK, DHV), jnp.float32), jnp.zeros((B, NH), jnp.float32)
    return k, v, chunk_log_forget_cumsum(f, L_INTRA, None), i, C0, m0


def main():
    args = inputs()
    fns = {
        name: jax.jit(lambda *a, walk=walk, s=s, w=w: walk(*a, stages=s, warps=w))
        for name, (walk, s, w) in VARIANTS.items()
    }
    if os.environ.get("LOWER") == "1":
        for name, fn in fns.items():
            print(name, "lowered:", len(fn.trace(*args).lower(lowering_platforms=("cuda",)).as_text()), flush=True)
        return
    ref = None
    for name, fn in fns.items():
        out = jax.block_until_ready(fn(*args))
        ref = out if ref is None else ref
        d = [float(jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32)))) for a, b in zip(out, ref)]
        print(f"{name}: max |diff| vs the pointer walk: C_all {d[0]:.3g}, C_last {d[1]:.3g}", flush=True)
    for name, median_ms, min_ms in median_times({name: functools.partial(fn, *args) for name, fn in fns.items()}):
        print(f"| {name} | {median_ms:.3f} ms | min {min_ms:.3f} |", flush=True)


def median_times(calls: dict) -> list[tuple[str, float, float]]:
    """(name, median ms, min ms) of each call's wall time: 10 waited-for calls after 3, in three rounds
    over the calls (so that a slow phase of the card hits every variant)."""
    times = {name: [] for name in calls}
    for _ in range(3):
        for name, call in calls.items():
            for _ in range(3):
                jax.block_until_ready(call())
            for _ in range(10):
                t0 = time.perf_counter()
                jax.block_until_ready(call())
                times[name].append(time.perf_counter() - t0)
    return [(name, 1e3 * statistics.median(ts), 1e3 * min(ts)) for name, ts in times.items()]


if __name__ == "__main__":
    main()
