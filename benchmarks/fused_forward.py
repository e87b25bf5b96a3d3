"""Experiment (issue 10): the mLSTM forward with the chunk states carried in registers, never stored.

The library's forward (materialised scores) runs three kernels: the state walk stores C at every chunk
boundary (537 MB of bf16 at the xLSTM-7B layer), the scores kernel stores the gated scores P, and the
output kernel reads C and P back for h = (w q C + P V) / (den + eps). Here:

1. ``nm_walk_kernel``: only the n and m walk (the library's ``_normaliser_walk``), one program per DHQK
   block and head, storing n and m at every chunk boundary (what the scores kernel needs);
2. the library's scores kernel (``chunkwise_fw.launch_scores``), unchanged;
3. ``fused_walk_kernel``: one program per (DHV tile, head) walks the chunks in order with its (DHQK x
   BLOCK_DHV) tile of C in fp32 registers. For each chunk it first writes h of the chunk's rows for its
   columns (q C with C rounded to q's dtype, as the library's output kernel reads the stored states, plus
   P V), then updates C over the chunk as the library's state walk does. Only the last C is stored.

Work per program and chunk of L steps: q C (L x DHQK x BLOCK_DHV), P V (the causal half of L x L x
BLOCK_DHV) and the update (DHQK x L x BLOCK_DHV); at the 7B layer (8 x 8 x 8192 x 256 x 512, L = 256,
BLOCK_DHV = 64) about 0.36 TFLOP in all, 0.46 ms at 790 TFLOP/s; and no C round trip through memory.

h equals the library's up to the order of fp32 sums (checked in tests/triton_interpret/
test_fused_forward_interpret.py; on the H200 every output was bit-identical). **It did not pay**: on the
H200 the 7B layer's forward took 3.60 ms with the best tile against 2.54 ms for the library's, the fused walk
alone 2.33 ms against 1.48 ms for the state walk and output kernel it replaces: each program's chunks are a
chain of dependent MMAs, one 8-warp program per SM (benchmarks/results/h200_session18_2026-12-04.md).

    python benchmarks/fused_forward.py [--shape 8x8x8192x256x512] [--reps 20] [--out FILE.md]
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import triton
import triton.language as tl

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # for benchmarks.timing

from benchmarks.timing import (  # noqa: E402
    interleaved_median_ms,
    markdown_table,
    mlstm_inputs,
    shape_parser,
    write_report,
)
from xlstm_flax.kernels import common  # noqa: E402
from xlstm_flax.kernels.triton import chunkwise_fw_kernels as K  # noqa: E402
from xlstm_flax.kernels.triton.chunkwise_fw import launch_scores, mlstm_chunkwise_fw_result  # noqa: E402
from xlstm_flax.kernels.triton.launch import triton_call  # noqa: E402
from xlstm_flax.kernels.triton.shared import cdiv, chunk_log_forget_cumsum, dot_precision, padded_dim  # noqa: E402
from xlstm_flax.kernels.triton.tuning import resolve_fw_config  # noqa: E402

# (BLOCK_DHV, warps, stages) of the fused walk: its C tile (DHQK x BLOCK_DHV fp32, 64 KiB at the 7B layer
# with 64 columns) lives in registers. ptxas (sm_90a, 7B head dims, bf16): registers / spilled bytes /
# shared KiB 255 / 48 / 162, 245 / 0 / 96, 255 / 2796 / 161, 255 / 1568 / 145, 255 / 0 / 146 in this order;
# 3 stages at 64 columns asked for 244 KiB, over the 227 KiB a block may have.
FUSED_TILES = ((64, 8, 2), (64, 8, 1), (64, 4, 2), (32, 4, 2), (32, 8, 2))


# fmt: off
@triton.jit
def nm_walk_kernel(
    matK, vecB, vecI, vecN_initial, scaM_initial,  # inputs
    vecN_all, scaM_all,  # outputs
    S: tl.constexpr, DHQK: tl.constexpr, NC: tl.constexpr, L_INTRA: tl.constexpr, L_INTER: tl.constexpr,
    BLOCK_DHQK: tl.constexpr,
):
    """Grid (DHQK blocks, 1, B*NH): n and m at every intra-chunk boundary (the library's n / m walk)."""
    K._normaliser_walk(matK, vecB, vecI, vecI, vecN_initial, scaM_initial, vecN_all, scaM_all, S, DHQK, NC, L_INTRA,
                       L_INTER, BLOCK_DHQK, False)


@triton.jit
def fused_walk_kernel(
    matQ, matK, matV, vecB, vecI, matC_initial, scaM_initial, matP, vecW, vecDen,  # inputs
    matH, matC_last,  # outputs
    S: tl.constexpr, DHQK: tl.constexpr, DHV: tl.constexpr, NC: tl.constexpr, L_INTRA: tl.constexpr,
    L_INTER: tl.constexpr, BLOCK_DHQK: tl.constexpr, BLOCK_DHV: tl.constexpr, BLOCK_LQ: tl.constexpr,
    BLOCK_K: tl.constexpr, EPS: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Grid (DHV blocks, B*NH): h of every step for BLOCK_DHV columns, and the last C, with C carried in
    registers (BLOCK_DHQK >= DHQK: the whole head dim in one tile)."""
    pid_v, bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    offs_q, mask_q, offs_v, mask_v, offs_c, mask_c = K.state_tile(0, pid_v, DHQK, DHV, BLOCK_DHQK, BLOCK_DHV)
    matC = tl.load(matC_initial + bh * DHQK * DHV + offs_c, mask=mask_c, other=0.0)
    scaM = tl.load(scaM_initial + bh)
    offs_k = tl.arange(0, BLOCK_K)
    for chunk in range(NC):
        t_chunk = bh * S + chunk * L_INTRA
        state = matC.to(matQ.dtype.element_ty)  # as the output kernel reads a stored state
        for row0 in range(0, L_INTRA, BLOCK_LQ):
            t_rows = t_chunk + row0 + tl.arange(0, BLOCK_LQ)
            q = tl.load(matQ + t_rows[:, None] * DHQK + offs_q[None, :], mask=mask_q[None, :], other=0.0)
            acc = tl.dot(q, state, input_precision=DOT_PRECISION) * tl.load(vecW + t_rows)[:, None]
            for col0 in range(0, row0 + BLOCK_LQ, BLOCK_K):
                p = tl.load(matP + t_rows[:, None] * L_INTRA + col0 + offs_k[None, :])
                v = K.step_rows(matV, t_chunk + col0, offs_v, mask_v, DHV, BLOCK_K)
                acc += tl.dot(p, v, input_precision=DOT_PRECISION)
            h = acc / (tl.load(vecDen + t_rows) + EPS)[:, None]
            tl.store(matH + t_rows[:, None] * DHV + offs_v[None, :], h.to(matH.dtype.element_ty),
                     mask=mask_v[None, :])
        for t0 in range(chunk * L_INTRA, (chunk + 1) * L_INTRA, L_INTER):
            gates = bh * S + t0
            scaM, decay, weight = K._chunk_gates(vecB, vecI, vecI, gates, t0 % L_INTRA != 0, scaM, L_INTER, False)
            k = K.step_rows(matK, gates, offs_q, mask_q, DHQK, L_INTER)
            v = K.step_rows(matV, gates, offs_v, mask_v, DHV, L_INTER)
            matC = decay * matC + tl.dot(tl.trans(k), (v * weight[:, None]).to(v.dtype), input_precision=DOT_PRECISION)
    tl.store(matC_last + bh * DHQK * DHV + offs_c, matC, mask=mask_c)
# fmt: on


def fused_forward(q, k, v, i, f, *, chunk_size: int | None = None, tile=FUSED_TILES[0]):
    """(h (B, NH, S, DHV) in q's dtype, den, m, nq (B, NH, S) fp32, last C (B, NH, DHQK, DHV) fp32) of the
    mLSTM forward from the zero state, S a multiple of the chunk; the library's defaults for the n / m
    walk and the scores kernel, ``tile`` = (BLOCK_DHV, warps, stages) for the fused walk."""
    B, NH, S, DHQK = q.shape
    DHV = v.shape[-1]
    config = resolve_fw_config(common.Dims(B, NH, S, DHQK, DHV), q.dtype, chunk_size_intra=chunk_size)
    L, L_inter = config.chunk_size_intra, config.chunk_size_inter
    NC = S // L
    vecB, vecI = chunk_log_forget_cumsum(f, L), i.astype(jnp.float32)
    n0, m0 = jnp.zeros((B, NH, DHQK), jnp.float32), jnp.zeros((B, NH), jnp.float32)
    vecN_all, scaM_all = triton_call(
        k, vecB, vecI, n0, m0,
        kernel=nm_walk_kernel,
        out_shape=(jax.ShapeDtypeStruct((B, NH, NC + 1, DHQK), jnp.float32),
                   jax.ShapeDtypeStruct((B, NH, NC + 1), jnp.float32)),
        grid=(cdiv(DHQK, config.siz_b_DHQK_inter), 1, B * NH),
        num_warps=config.num_warps_inter, num_stages=config.num_stages_inter,
        S=S, DHQK=DHQK, NC=NC, L_INTRA=L, L_INTER=L_inter, BLOCK_DHQK=config.siz_b_DHQK_inter,
    )  # fmt: skip
    qk_scale = common.default_qk_scale(DHQK, None)
    nm_states = (None, vecN_all, scaM_all)
    matP, vecDen, vecM, vecNQ, vecW = launch_scores(q, k, vecB, vecI, None, nm_states, config, qk_scale)
    block_dhv, warps, stages = tile
    matH, matC_last = triton_call(
        q, k, v, vecB, vecI, jnp.zeros((B, NH, DHQK, DHV), jnp.float32), m0, matP, vecW, vecDen,
        kernel=fused_walk_kernel,
        out_shape=(jax.ShapeDtypeStruct((B, NH, S, DHV), q.dtype),
                   jax.ShapeDtypeStruct((B, NH, DHQK, DHV), jnp.float32)),
        grid=(cdiv(DHV, block_dhv), B * NH),
        num_warps=warps, num_stages=stages,
        S=S, DHQK=DHQK, DHV=DHV, NC=NC, L_INTRA=L, L_INTER=L_inter, BLOCK_DHQK=padded_dim(DHQK),
        BLOCK_DHV=block_dhv, BLOCK_LQ=config.siz_b_L_output, BLOCK_K=config.siz_b_K_output, EPS=0.0,
        DOT_PRECISION=dot_precision(q.dtype),
    )  # fmt: skip
    return matH, vecDen, vecM, vecNQ, matC_last


def library_forward(q, k, v, i, f, chunk_size: int | None = None):
    """The same outputs from the library's forward (``mlstm_chunkwise_fw_result``, its defaults)."""
    result = mlstm_chunkwise_fw_result(q, k, v, i, f, chunk_size_intra=chunk_size)
    return result.matH, result.vecDen, result.vecM, result.vecNQ, result.states.last()[0]


def max_relative(got, want) -> float:
    """max |got - want| / max |want| over an output pair, in fp32."""
    got, want = jnp.asarray(got, jnp.float32), jnp.asarray(want, jnp.float32)
    return float(jnp.max(jnp.abs(got - want)) / jnp.max(jnp.abs(want)))


def main(argv=None) -> str:
    args = shape_parser(__doc__, "8x8x8192x256x512").parse_args(argv)
    sets = [mlstm_inputs(args.shape, jnp.bfloat16, seed)[:5] for seed in range(2)]
    library = jax.jit(library_forward)
    fused = [jax.jit(lambda *x, tile=tile: fused_forward(*x, tile=tile)) for tile in FUSED_TILES]
    want = library(*sets[0])
    diffs = [", ".join(f"{max_relative(g, w):.1e}" for g, w in zip(fn(*sets[0]), want)) for fn in fused]
    times = interleaved_median_ms([library, *fused], sets, reps=args.reps)
    rows = [["library forward (three kernels, states stored)", times[0], "-"]]
    rows += [[f"fused walk, tile {tile}", ms, d] for tile, ms, d in zip(FUSED_TILES, times[1:], diffs)]
    table = markdown_table(["forward", "ms", "max rel. difference to the library (h, den, m, nq, last C)"], rows)
    return write_report(f"Fused-walk mLSTM forward, shape {args.shape}, bf16", [[table]], args.out)


if __name__ == "__main__":
    main()
