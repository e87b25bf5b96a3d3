"""Experiment (issue 10): the forward chunk-state walk with Triton's Hopper warp specialization.

In Triton 3.6, ``tl.range(..., warp_specialize=True)`` compiles the state walk only where the loop uses its
gate values element by element (``benchmarks/triton_ws_probe.py``); the library's walk reduces each chunk's
gates to its decay and stabiliser inside the loop. So this walk takes them prepared by XLA
(:func:`prepared_gates`): per chunk c of L steps, with a_j = i_j + b_end - b_j and g_c = b_end - b_prev
as in ``chunkwise_fw_kernels._chunk_gates``, the stabiliser m_c = max(g_c + m_{c-1}, max_j a_j) (a scan
over the chunks), the weights w_j = e^(a_j - m_c) and the carried state's decay e^(g_c + m_{c-1} - m_c),
read through TMA descriptors as (1, L) and (1, BLOCK_DHV) tiles. The walk: C = decay C + K^T diag(w) V,
states stored every L_INTRA steps, k and v through TMA descriptors (as ``states_tma.walk_tma``).

What Triton 3.6's warp specialization needs here, found by compiling (each other form fails in its pass):
the gates used only element by element; the row index computed once per load (the decay's index apart
from the weights'); the decays as a row vector scaling the state's columns (the pass splits the state
tile's rows between two consumer warp groups and would split a column vector too); no split or permute.

The script compares every walk's states with the library's pointer walk (max |difference|, printed) and
prints median wall times of 10 calls after 3, in three rounds over the variants; "matmul only" drops the
gates (timing only). jax-triton 0.4.1 launches a kernel with the warps it was asked for, and a
warp-specialised kernel needs more (its PTX's ``.reqntid``): the script launches it with those.

Result (H200, benchmarks/results/h200_session27_2026-12-06.md): with the gates prepared the walk is correct
and no faster (0.908 against 0.895 ms at the 7B layer shape), and the warp-specialised kernels return wrong
states (NaN), even the matmul-only one: launching them takes more than the thread count jax-triton 0.4.1
can be given.

    python benchmarks/states_ws.py              # on a GPU with jax-triton
    TINY=1 LOWER=1 python benchmarks/states_ws.py   # CUDA lowering of every variant, on any machine
"""

import functools
import os
import re
import sys

import jax
import jax.numpy as jnp
import triton
import triton.language as tl

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import states_tma as T  # noqa: E402  (also patches jax-triton for TMA descriptors)
from xlstm_flax.kernels.triton.launch import triton_call  # noqa: E402

_kernel_lib = T.jt.triton_lib.triton_kernel_call_lib


class _LaunchWithKernelWarps:
    """jax-triton's kernel library, except that a kernel is launched with its PTX's thread count."""

    def __getattr__(self, name):
        return getattr(_kernel_lib, name)

    @staticmethod
    def TritonKernel(name, num_warps, num_ctas, shared_mem_bytes, binary, *rest):  # noqa: N802
        threads = re.search(r"\.reqntid (\d+)", binary if isinstance(binary, str) else binary.decode("latin-1"))
        return _kernel_lib.TritonKernel(
            name, int(threads.group(1)) // 32 if threads else num_warps, num_ctas, shared_mem_bytes, binary, *rest
        )


T.jt.triton_lib.triton_kernel_call_lib = _LaunchWithKernelWarps()


# fmt: off
@triton.jit
def walk_prepared(descK, descV, descW, descD, matC_initial, matC_all, matC_last, S: tl.constexpr, DHQK: tl.constexpr,
                  DHV: tl.constexpr, NC: tl.constexpr, L_INTRA: tl.constexpr, L_INTER: tl.constexpr,
                  BLOCK_DHQK: tl.constexpr, BLOCK_DHV: tl.constexpr, WS: tl.constexpr, GATES: tl.constexpr = True):
    """C = decay C + K^T diag(w) V over the chunks, w and decay prepared; GATES off: C += K^T V (timing only)."""
    pid_q, pid_v, bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    offs_c, mask_c = T.K.state_tile(pid_q, pid_v, DHQK, DHV, BLOCK_DHQK, BLOCK_DHV)[4:]
    matC = tl.load(matC_initial + bh * DHQK * DHV + offs_c, mask=mask_c, other=0.0)
    tl.store(matC_all + bh * (NC + 1) * DHQK * DHV + offs_c, matC.to(matC_all.dtype.element_ty), mask=mask_c)
    PER: tl.constexpr = L_INTRA // L_INTER
    for step in tl.range(S // L_INTER, warp_specialize=WS):
        row = tl.program_id(2) * (S // L_INTER) + step  # int32: the warp specialization fails on a cast
        k = descK.load([row * L_INTER, pid_q * BLOCK_DHQK])
        v = descV.load([row * L_INTER, pid_v * BLOCK_DHV])
        if GATES:  # decay rows chunk-major: an index computed apart from row's (shared, it fails to compile)
            weight = tl.reshape(descW.load([row, 0]), (L_INTER,))
            decay = tl.reshape(descD.load([step * tl.num_programs(2) + tl.program_id(2), 0]), (BLOCK_DHV,))
            matC = matC * decay[None, :] + tl.dot(tl.trans(k), (v * weight[:, None]).to(v.dtype))
        else:
            matC = tl.dot(tl.trans(k), v, matC)
        if (step & (PER - 1)) == PER - 1:
            index = bh * (NC + 1) + (step + 1) // PER
            tl.store(matC_all + index * DHQK * DHV + offs_c, matC.to(matC_all.dtype.element_ty), mask=mask_c)
    tl.store(matC_last + bh * DHQK * DHV + offs_c, matC, mask=mask_c)
# fmt: on


def prepared_gates(vecB, vecI, m0):
    """(w (B NH NCI, L), decay (NCI B NH, BLOCK_DHV) repeated along its rows, m (B, NH, NCI)) of chunks
    of L = L_INTER steps from the chunk-local log-forget cumsum vecB (restarted every L_INTRA steps), the
    input gate vecI (both (B, NH, S)) and the initial stabiliser m0 (B, NH)."""
    per = T.L_INTRA // T.L_INTER
    b = vecB.reshape(T.B, T.NH, -1, T.L_INTER)
    b_end = b[..., -1]
    starts_intra = (jnp.arange(b.shape[2]) % per) == 0
    b_prev = jnp.where(starts_intra, 0.0, jnp.pad(b_end, ((0, 0), (0, 0), (1, 0)))[..., :-1])
    a = vecI.reshape(b.shape) + b_end[..., None] - b
    g, a_max = b_end - b_prev, jnp.max(a, axis=-1)

    def chunk(m_prev, ga):
        m = jnp.maximum(ga[0] + m_prev, ga[1])
        return m, (m, jnp.exp(ga[0] + m_prev - m))

    _, (m, decay) = jax.lax.scan(chunk, m0, (jnp.moveaxis(g, -1, 0), jnp.moveaxis(a_max, -1, 0)))
    m, decay = jnp.moveaxis(m, 0, -1), jnp.moveaxis(decay, 0, -1)
    w = jnp.exp(a - m[..., None])
    decay_rows = jnp.broadcast_to(jnp.moveaxis(decay, -1, 0)[..., None], (decay.shape[-1], T.B, T.NH, T.BV))
    return w.reshape(-1, T.L_INTER), decay_rows.reshape(-1, T.BV), m


def prepared_walk(k, v, w, decay, C0, *, stages, warps, **flags):
    desc = T.jt.TensorDescriptor.from_array
    dk = desc(k.reshape(T.B * T.NH * T.S, T.DHQK), (T.L_INTER, T.BQ))
    dv = desc(v.reshape(T.B * T.NH * T.S, T.DHV), (T.L_INTER, T.BV))
    dw, dd = desc(w, (1, T.L_INTER)), desc(decay, (1, T.BV))
    return triton_call(dk, dv, dw, dd, C0, kernel=walk_prepared, out_shape=T.OUT_SHAPE, grid=T.GRID,
                       num_warps=warps, num_stages=stages, **T.SIZES, **flags)  # fmt: skip


def library_walk(k, v, vecB, i, C0, m0):
    return T.pointer_walk(k, v, vecB, i, C0, m0, stages=2, warps=4)


# name: (function of the inputs, uses the prepared gates); the first is the reference of the differences
VARIANTS = {
    "library walk (pointer loads, gates in the loop, 4 warps, 2 stages)": (library_walk, False),
    **{
        f"prepared gates, TMA, {stages} stages, warp_specialize={ws}": (
            functools.partial(prepared_walk, stages=stages, warps=4, WS=ws),
            True,
        )
        for ws in (False, True)
        for stages in (2, 3)
    },
    **{
        f"matmul only, TMA, 3 stages, warp_specialize={ws} (timing only)": (
            functools.partial(prepared_walk, stages=3, warps=4, WS=ws, GATES=False),
            True,
        )
        for ws in (False, True)
    },
}


def main():
    k, v, vecB, i, C0, m0 = T.inputs()
    prepare = jax.jit(prepared_gates)
    w, decay, _ = prepare(vecB, i, m0)
    fns = {}
    for name, (walk, prepared) in VARIANTS.items():
        args = (k, v, w, decay, C0) if prepared else (k, v, vecB, i, C0, m0)
        fns[name] = (jax.jit(walk), args)
    fns["XLA's gate preparation alone"] = (prepare, (vecB, i, m0))
    if os.environ.get("LOWER") == "1":
        for name, (fn, args) in fns.items():
            print(name, "lowered:", len(fn.trace(*args).lower(lowering_platforms=("cuda",)).as_text()), flush=True)
        return
    ref = None
    for name in VARIANTS:
        fn, args = fns[name]
        out = jax.block_until_ready(fn(*args))
        ref = out if ref is None else ref
        d = [float(jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32)))) for a, b in zip(out, ref)]
        scale = float(jnp.max(jnp.abs(ref[1])))
        print(f"{name}: max |diff| vs the library walk: C_all {d[0]:.3g}, C_last {d[1]:.3g} (max |C_last| {scale:.3g})")
    for name, median_ms, min_ms in T.median_times(
        {name: functools.partial(fn, *args) for name, (fn, args) in fns.items()}
    ):
        print(f"| {name} | {median_ms:.3f} ms | min {min_ms:.3f} |", flush=True)


if __name__ == "__main__":
    main()
