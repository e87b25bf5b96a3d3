"""Experiment (issue 10): the chunk states (forward) and state cotangents (backward) in two parallel passes.

The library's recurrent kernels walk the chunks of every head in order, one program per state tile,
doing one chunk's GEMM after the other. Here the same recurrences X_c = d_c X_prev + U_c run as:

1. (JAX, per-chunk scalars) the decays d_c and the step weights w_t. Forward: g_c = b at the chunk's
   last step, A_c = max_t (i_t + g_c - b_t), the stabilisers m_c = max(g_c + m_{c-1}, A_c) as
   G_c + max(m_0, cummax(A - G)) with G the cumsum of g, d_c = e^(g_c + m_{c-1} - m_c) and
   w_t = e^(i_t + g_c - b_t - m_c). Backward (m_t known from the forward): w_t = s e^(b_t + m_prev - m_t)
   and d_c = e^(m_prev + g_c - m_next), m_prev / m_next the m at the chunk's boundaries.
2. (Triton, one program per (DHQK tile, DHV tile, head, chunk): a batched GEMM) the chunk's update
   U_c = X_c^T diag(w) Y_c (X, Y = k, v forward; q, dh backward) in the states' dtype, at the slot the
   scan reads it from; the programs of the first DHV tile also write sum_t w'_t x_t (fp32; w' = w
   forward, w dnq backward), which JAX scans for n / dn.
3. (Triton, one program per (DHQK tile, DHV tile, head)) the scan X_c = d_c X_prev + U_c, forwards or
   backwards, in place, X in fp32 registers; the end value also in fp32.

Integrated, U would live where the states go (each slot is read before it is overwritten); this
experiment keeps them apart. The price is one rounding of every U_c to the states' dtype before the scan.
The script times the library's kernel and the two passes (several GEMM tiles, and each pass alone) at one
shape (bf16, chunk = chunk_size_intra) and prints the largest relative differences of the results.

Result (H200, benchmarks/results/h200_states_two_pass_2026-12-03.md): no gain. At the 7B layer the GEMM
pass alone is as slow as the whole sequential kernel with the same tile, and the scan costs 0.58 ms.

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
from xlstm_flax.kernels.triton import chunkwise_bw as bw  # noqa: E402
from xlstm_flax.kernels.triton.chunkwise_fw import mlstm_chunkwise_fw_result, mlstm_chunkwise_states  # noqa: E402
from xlstm_flax.kernels.triton.launch import triton_call  # noqa: E402
from xlstm_flax.kernels.triton.shared import chunk_log_forget_cumsum, dot_precision, heads_flat  # noqa: E402
from xlstm_flax.kernels.triton.tuning import resolve_bw_config  # noqa: E402

EPS = 1e-6  # the registry's default
# (BK, BV, warps) of the update GEMM
GEMM_TILES = ((64, 64, 4), (128, 64, 4), (128, 128, 4), (128, 128, 8), (256, 128, 8))
SCAN_TILE = 64


@triton.jit
def chunk_update_kernel(
    matX, matY, vecW, vecWn, matU_all, vecN_upd,
    S: tl.constexpr, DHQK: tl.constexpr, DHV: tl.constexpr, L: tl.constexpr, BL: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr, SLOT: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """Grid (DHQK / BK, DHV / BV, BH * NC): U_c = X_c^T diag(w) Y_c into matU_all[bh, c + SLOT]; the
    programs of the first DHV tile also write sum_t wn_t x_t to vecN_upd[bh, c] (fp32)."""
    pid_k, pid_v, pid = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    NC: tl.constexpr = S // L
    bh, chunk = pid // NC, pid % NC
    offs_k, offs_v = pid_k * BK + tl.arange(0, BK), pid_v * BV + tl.arange(0, BV)
    acc = tl.zeros([BK, BV], tl.float32)
    n_acc = tl.zeros([BK], tl.float32)
    for t0 in range(0, L, BL):
        t = bh * S + chunk * L + t0 + tl.arange(0, BL)
        x = tl.load(matX + t[:, None] * DHQK + offs_k[None, :])
        y = tl.load(matY + t[:, None] * DHV + offs_v[None, :])
        w = tl.load(vecW + t)
        acc = tl.dot(tl.trans(x), (y * w[:, None]).to(y.dtype), acc=acc, input_precision=PRECISION)
        if pid_v == 0:
            n_acc += tl.sum(x.to(tl.float32) * tl.load(vecWn + t)[:, None], axis=0)
    slot = bh * (NC + 1) + chunk + SLOT
    tl.store(matU_all + (slot * DHQK + offs_k)[:, None] * DHV + offs_v[None, :], acc.to(matU_all.dtype.element_ty))
    tl.store(vecN_upd + pid * DHQK + offs_k, n_acc, mask=pid_v == 0)


@triton.jit
def scan_kernel(
    matX_edge, vecN_edge, vecD, matU_all, vecN_upd, matX_all, vecN_all, matX_end,
    DHQK: tl.constexpr, DHV: tl.constexpr, NC: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    REVERSE: tl.constexpr,
):  # fmt: skip
    """Grid (DHQK / BK, DHV / BV, BH). Forward: X_0 = edge, X_{c+1} = d_c X_c + U_{c+1}; REVERSE:
    X_NC = edge, X_c = d_c X_{c+1} + U_c. The slots of matU_all / matX_all; matX_end (fp32) = the last.
    The programs of the first DHV tile scan n alike over the chunk sums vecN_upd (BH, NC, DHQK)."""
    pid_k, pid_v, bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    offs_k = pid_k * BK + tl.arange(0, BK)
    offs = offs_k[:, None] * DHV + (pid_v * BV + tl.arange(0, BV))[None, :]
    base, n_base = bh * (NC + 1) * DHQK * DHV, bh * (NC + 1) * DHQK
    edge = NC if REVERSE else 0
    X = tl.load(matX_edge + bh * DHQK * DHV + offs)
    n = tl.load(vecN_edge + bh * DHQK + offs_k)
    tl.store(matX_all + base + edge * DHQK * DHV + offs, X.to(matX_all.dtype.element_ty))
    tl.store(vecN_all + n_base + edge * DHQK + offs_k, n, mask=pid_v == 0)
    for j in range(NC):
        c = NC - 1 - j if REVERSE else j
        slot = c if REVERSE else c + 1
        d = tl.load(vecD + bh * NC + c)
        X = d * X + tl.load(matU_all + base + slot * DHQK * DHV + offs).to(tl.float32)
        tl.store(matX_all + base + slot * DHQK * DHV + offs, X.to(matX_all.dtype.element_ty))
        if pid_v == 0:
            n = d * n + tl.load(vecN_upd + (bh * NC + c) * DHQK + offs_k)
            tl.store(vecN_all + n_base + slot * DHQK + offs_k, n)
    tl.store(matX_end + bh * DHQK * DHV + offs, X)


def chunk_updates(x, y, w, wn, L: int, slot: int, gemm_tile=GEMM_TILES[0]):
    """x (BH, S, K), y (BH, S, V), w, wn (BH, S) fp32: (U (BH, NC + 1, K, V) in y's dtype, slot
    ``slot`` + c holding chunk c's update; n updates (BH, NC, K) fp32)."""
    BH, S, K = x.shape
    V, NC = y.shape[-1], S // L
    BK, BV, warps = gemm_tile
    return triton_call(
        x,
        y,
        w,
        wn,
        kernel=chunk_update_kernel,
        out_shape=(jax.ShapeDtypeStruct((BH, NC + 1, K, V), y.dtype), jax.ShapeDtypeStruct((BH, NC, K), jnp.float32)),
        grid=(K // BK, V // BV, BH * NC),
        num_warps=warps,
        num_stages=3,
        S=S,
        DHQK=K,
        DHV=V,
        L=L,
        BL=64,
        BK=BK,
        BV=BV,
        SLOT=slot,
        PRECISION=dot_precision(x.dtype),
    )


def scan(edge, n_edge, decay, updates, n_updates, reverse: bool):
    """The scan pass over ``updates`` (BH, NC + 1, K, V) and ``n_updates`` (BH, NC, K) with ``decay``
    (BH, NC) from ``edge`` (BH, K, V), ``n_edge`` (BH, K) fp32: (all X in updates' dtype, all n fp32,
    end X fp32)."""
    BH, _, K, V = updates.shape
    return triton_call(
        edge,
        n_edge,
        decay,
        updates,
        n_updates,
        kernel=scan_kernel,
        out_shape=(
            jax.ShapeDtypeStruct(updates.shape, updates.dtype),
            jax.ShapeDtypeStruct(updates.shape[:3], jnp.float32),
            jax.ShapeDtypeStruct(edge.shape, jnp.float32),
        ),
        grid=(K // SCAN_TILE, V // SCAN_TILE, BH),
        num_warps=4,
        num_stages=2,
        DHQK=K,
        DHV=V,
        NC=decay.shape[1],
        BK=SCAN_TILE,
        BV=SCAN_TILE,
        REVERSE=reverse,
    )


def forward_scalars(i, f, L: int):
    """(m (BH, NC + 1) with m_0 = 0, decay (BH, NC), w (BH, S)) of the forward, from i, f (B, NH, S)."""
    B, NH, S = i.shape
    BH, NC = B * NH, S // L
    b = chunk_log_forget_cumsum(f, L).reshape(BH, NC, L)
    g = b[..., -1]
    a = i.reshape(BH, NC, L).astype(jnp.float32) + g[..., None] - b
    G = jnp.cumsum(g, axis=1)
    m0 = jnp.zeros((BH, 1), jnp.float32)
    m = G + jnp.maximum(m0, jax.lax.cummax(jnp.max(a, axis=-1) - G, axis=1))
    m_all = jnp.concatenate([m0, m], axis=1)
    return m_all, jnp.exp(g + m_all[:, :-1] - m), jnp.exp(a - m[..., None]).reshape(BH, S)


def two_pass_states(k, v, i, f, L: int, gemm_tile=GEMM_TILES[0]):
    """(C_all (BH, NC+1, K, V) in k's dtype, n_all, m_all fp32) from zero initial states."""
    BH, S, K = heads_flat(k).shape
    m_all, decay, w = forward_scalars(i, f, L)
    updates, n_updates = chunk_updates(heads_flat(k), heads_flat(v), w, w, L, 1, gemm_tile)
    matC_all, n_all, _ = scan(*_zero_edges(BH, K, v.shape[-1]), decay, updates, n_updates, reverse=False)
    return matC_all, n_all, m_all


def _zero_edges(BH: int, K: int, V: int):
    return jnp.zeros((BH, K, V), jnp.float32), jnp.zeros((BH, K), jnp.float32)


def backward_scalars(args: bw.KernelArgs, L: int, s: float):
    """(decay (BH, NC), w (BH, S)) of the backward from the kernels' b, m and mden (fp32); w weights dh."""
    BH, S = args.vecB.shape
    b, m = args.vecB.reshape(BH, -1, L), args.vecM.reshape(BH, -1, L)
    m_prev = jnp.concatenate([args.scaM0[:, None], m[:, :-1, -1]], axis=1)
    w = s * jnp.exp(b + m_prev[..., None] - args.vecMDen.reshape(BH, -1, L))
    return jnp.exp(m_prev + b[..., -1] - m[..., -1]), w.reshape(BH, S)


def two_pass_cotangents(args: bw.KernelArgs, L: int, s: float, gemm_tile=GEMM_TILES[0]):
    """(dC_all (BH, NC+1, K, V) in q's dtype, dn_all fp32) from zero last-state cotangents."""
    BH, S, K = args.matQ.shape
    decay, w = backward_scalars(args, L, s)
    updates, n_updates = chunk_updates(args.matQ, args.matDH, w, w * args.vecDNQ, L, 0, gemm_tile)
    return scan(*_zero_edges(BH, K, args.matV.shape[-1]), decay, updates, n_updates, reverse=True)[:2]


def _fitting(K: int, V: int) -> list:
    """The GEMM tiles that fit head dims K x V."""
    return [tile for tile in GEMM_TILES if tile[0] <= K and tile[1] <= V]


def _max_rel(x, y) -> float:
    x, y = x.astype(jnp.float32), y.astype(jnp.float32)
    return float(jnp.max(jnp.abs(x - y)) / jnp.max(jnp.abs(y)))


def _diffs(got, want) -> str:
    return ", ".join(f"{_max_rel(x, y.reshape(x.shape)):.1e}" for x, y in zip(got, want))


def forward_rows(sets, L: int, reps: int) -> list:
    library = jax.jit(
        lambda k, v, i, f: tuple(
            heads_flat(x) for x in mlstm_chunkwise_states(k, v, i, f, chunk_size_inter=L, chunk_size_intra=L)
        )
    )
    want = library(*sets[0])
    name = "library recurrent kernel (chunk_size_inter = intra)"
    rows = [["forward", name, median_ms(library, sets, reps=reps), "-"]]
    for tile in _fitting(sets[0][0].shape[-1], sets[0][1].shape[-1]):
        fn = jax.jit(lambda k, v, i, f, tile=tile: two_pass_states(k, v, i, f, L, tile))
        ms = median_ms(fn, sets, reps=reps)
        rows.append(["forward", f"two passes, GEMM tile {tile}", ms, _diffs(fn(*sets[0]), want)])
    k, v, i, f = sets[0]
    scalars = jax.jit(lambda i, f: forward_scalars(i, f, L))
    m_all, decay, w = scalars(i, f)
    gemm = jax.jit(lambda k, v, w: chunk_updates(heads_flat(k), heads_flat(v), w, w, L, 1))
    updates, n_updates = gemm(k, v, w)
    edges = _zero_edges(w.shape[0], k.shape[-1], v.shape[-1])
    scan_fn = jax.jit(lambda d, u, nu: scan(*edges, d, u, nu, reverse=False))
    rows += [
        ["forward", "pass 1 alone (JAX scalars)", median_ms(scalars, [(i, f)], reps=reps), "-"],
        ["forward", f"pass 2 alone (GEMM {GEMM_TILES[0]})", median_ms(gemm, [(k, v, w)], reps=reps), "-"],
        ["forward", "pass 3 alone (scan)", median_ms(scan_fn, [(decay, updates, n_updates)], reps=reps), "-"],
    ]
    return rows


def backward_rows(sets, L: int, reps: int) -> list:
    q, k, v, i, f, dh = sets[0]
    B, NH, S, K = q.shape
    dims = common.Dims(B, NH, S, K, v.shape[-1])
    config = resolve_bw_config(dims, q.dtype, chunk_size_intra=L)
    s = K**-0.5
    m0 = jnp.zeros((B, NH), jnp.float32)
    fw = jax.jit(lambda *a: mlstm_chunkwise_fw_result(*a, eps=EPS, chunk_size_intra=L))(q, k, v, i, f)
    args, _ = jax.jit(lambda *a: bw.kernel_args(*a, eps=EPS, chunk_size_intra=L))(
        q, k, v, i, f, m0, fw.matH, fw.vecDen, fw.vecM, fw.vecNQ, dh
    )
    zeros_c, zeros_n = jnp.zeros((B * NH, K, v.shape[-1]), jnp.float32), jnp.zeros((B * NH, K), jnp.float32)
    library = jax.jit(lambda a: bw.state_cotangents(a, zeros_c, zeros_n, s, config)[:2])
    want = library(args)
    name = f"library recurrent kernel (chunk {config.chunk_size_recurrent})"
    rows = [["backward", name, median_ms(library, [(args,)], reps=reps), "-"]]
    for tile in _fitting(K, v.shape[-1]):
        fn = jax.jit(lambda a, tile=tile: two_pass_cotangents(a, L, s, tile))
        ms = median_ms(fn, [(args,)], reps=reps)
        rows.append(["backward", f"two passes, GEMM tile {tile}", ms, _diffs(fn(args), want)])
    return rows


def main(argv=None) -> int:
    args = shape_parser(__doc__, "8x8x8192x256x512").parse_args(argv)
    shape = args.shape
    L = common.default_chunk_size(shape[2])
    sets = [mlstm_inputs(shape, jnp.bfloat16, seed) for seed in (0, 1)]
    rows = forward_rows([s[1:5] for s in sets], L, args.reps) + backward_rows(sets, L, args.reps)
    notes = [
        f"- shape B x NH x S x DHQK x DHV = {'x'.join(map(str, shape))}, bf16, chunk {L}, scan tile {SCAN_TILE}",
        "- difference: largest |two-pass - library| / largest |library| of (C, n, m) forward, (dC, dn) backward",
    ]
    write_report(
        "Chunk states: sequential kernels vs two passes",
        [notes, [markdown_table(["direction", "way", "ms", "difference"], rows)]],
        args.out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
