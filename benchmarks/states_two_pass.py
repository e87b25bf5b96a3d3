"""Experiment (issue 10): the forward's chunk states in two parallel passes instead of one sequential walk.

The library's recurrent kernel walks the chunks of every head in order, one program per state tile. Here:

1. (JAX, per-chunk scalars) g_c = b at the chunk's last step, A_c = max_t (i_t + g_c - b_t), the
   stabilisers m_c = max(g_c + m_{c-1}, A_c) as G_c + max(m_0, cummax(A - G)) with G the cumsum of g,
   the decays d_c = e^(g_c + m_{c-1} - m_c) and the step weights w_t = e^(i_t + g_c - b_t - m_c).
2. (Triton, one program per (DHQK tile, DHV tile, head, chunk): a batched GEMM) the chunk's update
   U_c = K_c^T diag(w) V_c, stored in the states' dtype at the slot of state c + 1.
3. (Triton, one program per (DHQK tile, DHV tile, head)) the scan C_c = d_c C_{c-1} + U_c in place, C in
   fp32 registers; the last C also in fp32. n: pass 2's first DHV tile also sums w_t k_t per chunk, and
   JAX scans those sums over the chunks.

Integrated, U would live where the states go (the scan aliasing its input and output: each slot is read
before it is overwritten); this experiment keeps them apart. The price is one rounding of every U_c to the states'
dtype before the scan. The script times both ways at one shape (bf16, chunk = chunk_size_intra) and
prints the two's largest relative differences (C, n and m of every state).

    python benchmarks/states_two_pass.py [--shape 8x8x8192x256x512] [--reps 20] [--out FILE.md]
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import triton
import triton.language as tl

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # for benchmarks.timing

from benchmarks.timing import markdown_table, median_ms, mlstm_inputs, shape_parser, write_report  # noqa: E402
from xlstm_flax.kernels import common  # noqa: E402
from xlstm_flax.kernels.triton.chunkwise_fw import mlstm_chunkwise_states  # noqa: E402
from xlstm_flax.kernels.triton.launch import triton_call  # noqa: E402
from xlstm_flax.kernels.triton.shared import chunk_log_forget_cumsum, dot_precision  # noqa: E402

BLOCK_STEPS = 64  # steps per GEMM iteration


@triton.jit
def chunk_update_kernel(
    matK, matV, vecW, matC_all, vecN_upd,
    S: tl.constexpr, DHQK: tl.constexpr, DHV: tl.constexpr, L: tl.constexpr, BL: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """Grid (DHQK / BK, DHV / BV, BH * NC): U_c = K_c^T diag(w) V_c into matC_all[bh, c + 1]; the programs
    of the first DHV tile also write sum_t w_t k_t to vecN_upd[bh, c] (fp32)."""
    pid_k, pid_v, pid = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    NC: tl.constexpr = S // L
    bh, chunk = pid // NC, pid % NC
    offs_k, offs_v = pid_k * BK + tl.arange(0, BK), pid_v * BV + tl.arange(0, BV)
    acc = tl.zeros([BK, BV], tl.float32)
    n_acc = tl.zeros([BK], tl.float32)
    for t0 in range(0, L, BL):
        t = bh * S + chunk * L + t0 + tl.arange(0, BL)
        k = tl.load(matK + t[:, None] * DHQK + offs_k[None, :])
        v = tl.load(matV + t[:, None] * DHV + offs_v[None, :])
        w = tl.load(vecW + t)
        acc = tl.dot(tl.trans(k), (v * w[:, None]).to(v.dtype), acc=acc, input_precision=PRECISION)
        if pid_v == 0:
            n_acc += tl.sum(k.to(tl.float32) * w[:, None], axis=0)
    state = bh * (NC + 1) + chunk + 1
    tl.store(matC_all + (state * DHQK + offs_k)[:, None] * DHV + offs_v[None, :], acc.to(matC_all.dtype.element_ty))
    tl.store(vecN_upd + pid * DHQK + offs_k, n_acc, mask=pid_v == 0)


@triton.jit
def scan_kernel(
    matC_initial, vecD, matU_all, matC_all, matC_last,
    DHQK: tl.constexpr, DHV: tl.constexpr, NC: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
):  # fmt: skip
    """Grid (DHQK / BK, DHV / BV, BH): C_c = d_c C_{c-1} + U_c over the chunks, U from matU_all's slot c + 1."""
    pid_k, pid_v, bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    offs = (pid_k * BK + tl.arange(0, BK))[:, None] * DHV + (pid_v * BV + tl.arange(0, BV))[None, :]
    matC = tl.load(matC_initial + bh * DHQK * DHV + offs)
    tl.store(matC_all + bh * (NC + 1) * DHQK * DHV + offs, matC.to(matC_all.dtype.element_ty))
    for c in range(NC):
        slot = (bh * (NC + 1) + c + 1) * DHQK * DHV + offs
        matC = tl.load(vecD + bh * NC + c) * matC + tl.load(matU_all + slot).to(tl.float32)
        tl.store(matC_all + slot, matC.to(matC_all.dtype.element_ty))
    tl.store(matC_last + bh * DHQK * DHV + offs, matC)


def two_pass_states(k, v, i, f, L: int, tile: int = 64):
    """(C_all (B, NH, NC+1, DHQK, DHV) in k's dtype, n_all, m_all fp32, C_last fp32) from the zero initial
    state, as ``mlstm_chunkwise_states`` returns them (plus C_last)."""
    B, NH, S, K = k.shape
    V, BH, NC = v.shape[-1], B * NH, S // L
    b = chunk_log_forget_cumsum(f, L).reshape(BH, NC, L)
    g = b[..., -1]
    a = i.reshape(BH, NC, L).astype(jnp.float32) + g[..., None] - b
    G = jnp.cumsum(g, axis=1)
    m0 = jnp.zeros((BH, 1), jnp.float32)
    m = G + jnp.maximum(m0, jax.lax.cummax(jnp.max(a, axis=-1) - G, axis=1))
    m_prev = jnp.concatenate([m0, m[:, :-1]], axis=1)
    decay = jnp.exp(g + m_prev - m)
    w = jnp.exp(a - m[..., None])
    kf, vf = k.reshape(BH, S, K), v.reshape(BH, S, V)
    tiles = dict(num_warps=4, DHQK=K, DHV=V, BK=tile, BV=tile)  # both kernels' state tiles
    updates, n_updates = triton_call(
        kf,
        vf,
        w.reshape(BH, S),
        kernel=chunk_update_kernel,
        out_shape=(jax.ShapeDtypeStruct((BH, NC + 1, K, V), k.dtype), jax.ShapeDtypeStruct((BH, NC, K), jnp.float32)),
        grid=(K // tile, V // tile, BH * NC),
        num_stages=3,
        S=S,
        L=L,
        BL=BLOCK_STEPS,
        PRECISION=dot_precision(k.dtype),
        **tiles,
    )
    matC_all, matC_last = triton_call(
        jnp.zeros((BH, K, V), jnp.float32),
        decay,
        updates,
        kernel=scan_kernel,
        out_shape=(jax.ShapeDtypeStruct(updates.shape, k.dtype), jax.ShapeDtypeStruct((BH, K, V), jnp.float32)),
        grid=(K // tile, V // tile, BH),
        num_stages=2,
        NC=NC,
        **tiles,
    )

    def n_step(n, xs):
        d, u = xs
        n = d[:, None] * n + u
        return n, n

    _, n = jax.lax.scan(n_step, jnp.zeros((BH, K), jnp.float32), (decay.T, n_updates.transpose(1, 0, 2)))
    n_all = jnp.concatenate([jnp.zeros((1, BH, K), jnp.float32), n]).transpose(1, 0, 2)
    m_all = jnp.concatenate([m0, m], axis=1)
    shape = (B, NH, NC + 1)
    return matC_all.reshape(*shape, K, V), n_all.reshape(*shape, K), m_all.reshape(shape), matC_last


def _max_rel(x, y) -> float:
    x, y = x.astype(jnp.float32), y.astype(jnp.float32)
    return float(jnp.max(jnp.abs(x - y)) / jnp.max(jnp.abs(y)))


def main(argv=None) -> int:
    args = shape_parser(__doc__, "8x8x8192x256x512").parse_args(argv)
    shape = tuple(int(x) for x in args.shape.split("x"))
    B, NH, S, K, V = shape
    L = common.default_chunk_size(S)
    sets = [mlstm_inputs(shape, jnp.bfloat16, seed)[1:5] for seed in (0, 1)]
    library = jax.jit(lambda k, v, i, f: mlstm_chunkwise_states(k, v, i, f, chunk_size_inter=L, chunk_size_intra=L))
    two_pass = jax.jit(lambda k, v, i, f: two_pass_states(k, v, i, f, L))
    want, got = library(*sets[0]), two_pass(*sets[0])
    diffs = [_max_rel(x, y) for x, y in zip(got[:3], want)]
    rows = [
        ["library recurrent kernel (chunk_size_inter = intra)", median_ms(library, sets, reps=args.reps), "-"],
        ["two passes (JAX scalars, GEMM, scan)", median_ms(two_pass, sets, reps=args.reps), f"{diffs}"],
    ]
    notes = [
        f"- shape B x NH x S x DHQK x DHV = {args.shape}, bf16, chunk {L}, tiles 64 x 64",
        "- difference: largest |two-pass - library| / largest |library| of C_all, n_all, m_all",
    ]
    write_report(
        "Chunk states: sequential kernel vs two passes",
        [notes, [markdown_table(["way", "ms", "difference"], rows)]],
        args.out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
