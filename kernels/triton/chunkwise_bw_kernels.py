"""Triton kernels of the chunkwise mLSTM backward (docs/math.md); launched by ``chunkwise_bw.py``.

Per (batch*head) ``bh`` all buffers are C-contiguous, time-major:
q, k (BH, S, DHQK); v, dh (BH, S, DHV); per-step vectors (BH, S) fp32; states at the chunk
boundaries (BH, NC+1, DHQK, DHV) / (BH, NC+1, DHQK) / (BH, NC+1), index 0 = initial state: n, m fp32,
C and its cotangent dC fp32 or in the input dtype (the launchers' choice; every kernel casts them to
the input dtype before its dots, and the recurrent kernel carries dC in fp32 and rounds it when storing).

The normaliser n is handled as one more value column (its value is 1, its output cotangent dnq), so
the backward is gated linear attention in stabilised units: with ``b`` the chunk-local log-forget
cumsum (``vecB``: the cumulative log forget gate inside an intra chunk, 0 before its first step) and
``m`` the per-step stabiliser, the kernels read dh itself, not dnum = dh / (den + eps): row t's factor
1 / (den_t + eps) joins its stabiliser, ``vecMDen`` = mden_t = m_t + log(den_t + eps), and its normaliser
cotangent, ``vecDNQ`` = dnq_t (den_t + eps) (docs/math.md 4.2):

    D[t, j]  = exp(b_t - b_j + i_j - mden_t)           (j <= t in one chunk)
    dq_t     = s (sum_j D[t, j] (dh_t . v_j + dnq_t) k_j + exp(b_t + m_prev - mden_t) (C dh_t + n dnq_t))
    dk_j     = s sum_t D[t, j] (dh_t . v_j + dnq_t) q_t + exp(g - b_j + i_j - m_end) (dC v_j + dn)
    dv_j     =   s sum_t D[t, j] (q_t . k_j) dh_t       + exp(g - b_j + i_j - m_end) dC^T k_j

(C, n, m_prev: state before the chunk; dC, dn: cotangent of the state after it, stabilised by m_end,
the m of the chunk's last step; g = b at the chunk's last step.) Dots take operands in the input dtype
(states are cast to it) and accumulate in fp32.

The parallel kernels recompute the scores dh_t . v_j (dq, dk) and q_t . k_j (dv) for every head-dim
tile they own. With ``MATERIALISED``, ``scores_bw_kernel`` computes them once per chunk instead and
stores dS[t, j] = s D[t, j] (dh_t . v_j + dnq_t) and P[t, j] = s D[t, j] (q_t . k_j) in q's dtype,
``matDS`` / ``matP`` (BH, S, L) (row t holds its chunk's L steps, written up to the diagonal's block);
dq, dk and dv then become dS K, dS^T Q and P^T dh plus their state terms.

Document resets (docs/math.md 5.4): the ``*_segments_kernel`` entries take ``vecSeg`` (BH, S) int32, the
chunk-local segment counter, and ``vecB`` restarted at every segment start; D keeps only pairs of one
segment, the state terms only rows before the chunk's first segment start (dq) or steps of its last
segment (dk, dv), and the state-cotangent recurrence stops at a segment start. Each entry is a thin
wrapper around one body with a ``HAS_SEGMENTS`` constexpr, so the entries without segments compile to
the same code as before resets existed. Not run through ``ruff format``: it would put each of the
kernels' many parameters on a line of its own.
"""

# fmt: off
from __future__ import annotations

import triton
import triton.language as tl

from .chunkwise_fw_kernels import step_rows


@triton.jit
def _gate_tile(b_t, m_t, offs_t, b_j, i_j, offs_j, seg_t, seg_j, HAS_SEGMENTS: tl.constexpr):
    """D[t, j] = exp(b_t - b_j + i_j - m_t) where j <= t (and, HAS_SEGMENTS, seg_t = seg_j), else 0: an
    fp32 (BT, BJ) tile."""
    log_d = b_t[:, None] - b_j[None, :] + i_j[None, :] - m_t[:, None]
    pairs = offs_j[None, :] <= offs_t[:, None]
    if HAS_SEGMENTS:
        pairs = pairs & (seg_t[:, None] == seg_j[None, :])
    return tl.exp(tl.where(pairs, log_d, -float("inf")))


@triton.jit
def _segment_of(vecSeg_bh, offs, HAS_SEGMENTS: tl.constexpr):
    """The chunk-local segment counter of steps ``offs`` (HAS_SEGMENTS), else ``offs`` (never read)."""
    if HAS_SEGMENTS:
        return tl.load(vecSeg_bh + offs)
    else:
        return offs


@triton.jit
def _rows_dot_tile(ptr_a, ptr_b, offs_a, offs_b, D: tl.constexpr, BD: tl.constexpr,
                   BA: tl.constexpr, BB: tl.constexpr, PRECISION: tl.constexpr):
    """sum_d A[a, d] B[b, d] over the full width D (blocks of BD): an fp32 (BA, BB) tile.

    ``ptr_a``/``ptr_b`` point at row 0 of one head of two (S, D) buffers.
    """
    acc = tl.zeros((BA, BB), tl.float32)
    for d0 in range(0, D, BD):
        offs_d = d0 + tl.arange(0, BD)
        mask_d = offs_d < D
        a = tl.load(ptr_a + offs_a[:, None] * D + offs_d[None, :], mask=mask_d[None, :], other=0.0)
        b = tl.load(ptr_b + offs_b[:, None] * D + offs_d[None, :], mask=mask_d[None, :], other=0.0)
        acc = tl.dot(a, tl.trans(b), acc=acc, input_precision=PRECISION)
    return acc


@triton.jit
def _rows_times_state_tile(ptr_x, ptr_state, offs_x, offs_own, mask_own, DHQK: tl.constexpr,
                           DHV: tl.constexpr, BX: tl.constexpr, BOWN: tl.constexpr, BLOOP: tl.constexpr,
                           OVER_DHV: tl.constexpr, PRECISION: tl.constexpr):
    """Rows of X times a (DHQK, DHV) fp32 state (cast to X's dtype), as an fp32 (BX, BOWN) tile:
    OVER_DHV: sum_v X[x, v] State[own, v] (X rows of width DHV, ``own`` indexes DHQK);
    else:     sum_q X[x, q] State[q, own] (X rows of width DHQK, ``own`` indexes DHV).
    The contraction runs in blocks of BLOOP."""
    D: tl.constexpr = DHV if OVER_DHV else DHQK
    acc = tl.zeros((BX, BOWN), tl.float32)
    for d0 in range(0, D, BLOOP):
        offs_d = d0 + tl.arange(0, BLOOP)
        mask_d = offs_d < D
        x = tl.load(ptr_x + offs_x[:, None] * D + offs_d[None, :], mask=mask_d[None, :], other=0.0)
        if OVER_DHV:
            state = tl.trans(tl.load(ptr_state + offs_own[:, None] * DHV + offs_d[None, :],
                                     mask=mask_own[:, None] & mask_d[None, :], other=0.0))
        else:
            state = tl.load(ptr_state + offs_d[:, None] * DHV + offs_own[None, :],
                            mask=mask_d[:, None] & mask_own[None, :], other=0.0)
        acc = tl.dot(x, state.to(x.dtype), acc=acc, input_precision=PRECISION)
    return acc


@triton.jit
def recurrent_bw_kernel(
    matQ, matDH, vecDNQ, vecB, vecM, vecMDen, scaM0, matDC_last, vecDN_last,  # inputs
    matDC_all, vecDN_all, matDC_first,  # outputs
    qk_scale: tl.constexpr, S: tl.constexpr, DHQK: tl.constexpr, DHV: tl.constexpr,
    L_INTRA: tl.constexpr, L_INTER: tl.constexpr, BQ: tl.constexpr, BV: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Walks the chunks backwards accumulating (dC, dn); stores them at every intra boundary.

    Grid (cdiv(DHQK, BQ), cdiv(DHV, BV) + 1, BH): the programs of the extra DHV block walk dn, the
    others dC (so no program holds q both in shared memory for the dC dot and in registers for the dn
    sum). Step k of ``L_INTER`` steps from boundary tau to tau' (tau' < tau), with b relative to tau'
    and m_tau' the m of step tau' (m0 at 0):
    dC_tau' = exp(m_tau' + g - m_tau) dC_tau + sum_t exp(b_t + m_tau' - mden_t) s q_t dh_t^T, and dn
    alike with dnq_t. ``matDC_first (BH, DHQK, DHV)`` fp32 gets dC at boundary 0 (the initial state's
    gradient).
    """
    _recurrent_bw(matQ, matDH, vecDNQ, vecB, vecB, vecM, vecMDen, scaM0, matDC_last, vecDN_last, matDC_all,
                  vecDN_all, matDC_first, qk_scale, S, DHQK, DHV, L_INTRA, L_INTER, BQ, BV, PRECISION, False)


@triton.jit
def recurrent_bw_segments_kernel(
    matQ, matDH, vecDNQ, vecB, vecSeg, vecM, vecMDen, scaM0, matDC_last, vecDN_last,  # inputs
    matDC_all, vecDN_all, matDC_first,  # outputs
    qk_scale: tl.constexpr, S: tl.constexpr, DHQK: tl.constexpr, DHV: tl.constexpr,
    L_INTRA: tl.constexpr, L_INTER: tl.constexpr, BQ: tl.constexpr, BV: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """:func:`recurrent_bw_kernel` with document resets: a step sends its cotangent to the state before
    its sub-chunk only if no segment starts in between, and a sub-chunk holding a segment start passes
    nothing of (dC, dn) back (decay 0)."""
    _recurrent_bw(matQ, matDH, vecDNQ, vecB, vecSeg, vecM, vecMDen, scaM0, matDC_last, vecDN_last, matDC_all,
                  vecDN_all, matDC_first, qk_scale, S, DHQK, DHV, L_INTRA, L_INTER, BQ, BV, PRECISION, True)


@triton.jit
def _recurrent_bw(
    matQ, matDH, vecDNQ, vecB, vecSeg, vecM, vecMDen, scaM0, matDC_last, vecDN_last, matDC_all, vecDN_all,
    matDC_first,
    qk_scale: tl.constexpr, S: tl.constexpr, DHQK: tl.constexpr, DHV: tl.constexpr,
    L_INTRA: tl.constexpr, L_INTER: tl.constexpr, BQ: tl.constexpr, BV: tl.constexpr,
    PRECISION: tl.constexpr, HAS_SEGMENTS: tl.constexpr,
):
    if tl.program_id(1) == tl.cdiv(DHV, BV):
        _normaliser_bw_walk(matQ, vecDNQ, vecB, vecSeg, vecM, vecMDen, scaM0, vecDN_last, vecDN_all, qk_scale, S,
                            DHQK, L_INTRA, L_INTER, BQ, HAS_SEGMENTS)
    else:
        _state_bw_walk(matQ, matDH, vecB, vecSeg, vecM, vecMDen, scaM0, matDC_last, matDC_all, matDC_first,
                       qk_scale, S, DHQK, DHV, L_INTRA, L_INTER, BQ, BV, PRECISION, HAS_SEGMENTS)


@triton.jit
def _sub_chunk_gates(vecB, vecM, vecMDen, vecSeg, gate_base, start, m0, qk_scale: tl.constexpr,
                     L_INTRA: tl.constexpr, L_INTER: tl.constexpr, HAS_SEGMENTS: tl.constexpr):
    """(s exp(b_t + m_tau' - mden_t) (L_INTER,), exp(m_tau' + g - m_tau)) of the sub-chunk of L_INTER steps
    from flat step ``gate_base + start``: each step's weight (of its dh) into the cotangent of the state
    before the sub-chunk, and the decay of the cotangent after it (m_tau = the m of the sub-chunk's last
    step)."""
    offs_t = start + tl.arange(0, L_INTER)
    b_base = tl.load(vecB + gate_base + start - 1, mask=start % L_INTRA != 0, other=0.0)
    m_prev = tl.load(vecM + gate_base + start - 1, mask=start > 0, other=0.0)
    m_prev = tl.where(start > 0, m_prev, m0)
    g = tl.load(vecB + gate_base + start + L_INTER - 1) - b_base
    log_coef = tl.load(vecB + gate_base + offs_t) - b_base + m_prev - tl.load(vecMDen + gate_base + offs_t)
    log_decay = m_prev + g - tl.load(vecM + gate_base + start + L_INTER - 1)
    if HAS_SEGMENTS:  # rows after a segment start do not see the state before the sub-chunk, and the
        # state after the sub-chunk ignores the one before it
        seg_t = tl.load(vecSeg + gate_base + offs_t)
        seg_before = tl.load(vecSeg + gate_base + start - 1, mask=start % L_INTRA != 0, other=0)
        log_coef = tl.where(seg_t == seg_before, log_coef, -float("inf"))
        log_decay = tl.where(tl.max(seg_t, axis=0) == seg_before, log_decay, -float("inf"))
    return tl.exp(log_coef) * qk_scale, tl.exp(log_decay)


@triton.jit
def _state_bw_walk(
    matQ, matDH, vecB, vecSeg, vecM, vecMDen, scaM0, matDC_last, matDC_all, matDC_first,
    qk_scale: tl.constexpr, S: tl.constexpr, DHQK: tl.constexpr, DHV: tl.constexpr,
    L_INTRA: tl.constexpr, L_INTER: tl.constexpr, BQ: tl.constexpr, BV: tl.constexpr,
    PRECISION: tl.constexpr, HAS_SEGMENTS: tl.constexpr,
):
    pid_q = tl.program_id(0)
    pid_v = tl.program_id(1)
    bh = tl.program_id(2).to(tl.int64)
    NC: tl.constexpr = S // L_INTRA
    offs_q = pid_q * BQ + tl.arange(0, BQ)
    offs_v = pid_v * BV + tl.arange(0, BV)
    mask_q = offs_q < DHQK
    mask_v = offs_v < DHV
    state_offs = offs_q[:, None] * DHV + offs_v[None, :]
    state_mask = mask_q[:, None] & mask_v[None, :]
    gate_base = bh * S
    dc_base = matDC_all + bh * (NC + 1) * DHQK * DHV

    dC = tl.load(matDC_last + bh * DHQK * DHV + state_offs, mask=state_mask, other=0.0)
    tl.store(dc_base + NC * DHQK * DHV + state_offs, dC.to(matDC_all.dtype.element_ty), mask=state_mask)
    m0 = tl.load(scaM0 + bh)
    for kk in range(NC):
        chunk = NC - 1 - kk
        for cc in range(L_INTRA // L_INTER):
            start = chunk * L_INTRA + L_INTRA - (cc + 1) * L_INTER
            coef, decay = _sub_chunk_gates(vecB, vecM, vecMDen, vecSeg, gate_base, start, m0, qk_scale, L_INTRA,
                                           L_INTER, HAS_SEGMENTS)
            q = step_rows(matQ, gate_base + start, offs_q, mask_q, DHQK, L_INTER)
            dh = step_rows(matDH, gate_base + start, offs_v, mask_v, DHV, L_INTER)
            weighted_dh = (dh.to(tl.float32) * coef[:, None]).to(q.dtype)
            dC = tl.dot(tl.trans(q), weighted_dh, acc=dC * decay, input_precision=PRECISION)
        tl.store(dc_base + chunk * DHQK * DHV + state_offs, dC.to(matDC_all.dtype.element_ty), mask=state_mask)
    tl.store(matDC_first + bh * DHQK * DHV + state_offs, dC, mask=state_mask)


@triton.jit
def _normaliser_bw_walk(
    matQ, vecDNQ, vecB, vecSeg, vecM, vecMDen, scaM0, vecDN_last, vecDN_all, qk_scale: tl.constexpr, S: tl.constexpr,
    DHQK: tl.constexpr, L_INTRA: tl.constexpr, L_INTER: tl.constexpr, BQ: tl.constexpr, HAS_SEGMENTS: tl.constexpr,
):
    pid_q = tl.program_id(0)
    bh = tl.program_id(2).to(tl.int64)
    NC: tl.constexpr = S // L_INTRA
    offs_q = pid_q * BQ + tl.arange(0, BQ)
    mask_q = offs_q < DHQK
    gate_base = bh * S
    dn_base = vecDN_all + bh * (NC + 1) * DHQK
    dn = tl.load(vecDN_last + bh * DHQK + offs_q, mask=mask_q, other=0.0)
    tl.store(dn_base + NC * DHQK + offs_q, dn, mask=mask_q)
    m0 = tl.load(scaM0 + bh)
    for kk in range(NC):
        chunk = NC - 1 - kk
        for cc in range(L_INTRA // L_INTER):
            start = chunk * L_INTRA + L_INTRA - (cc + 1) * L_INTER
            offs_t = start + tl.arange(0, L_INTER)
            coef, decay = _sub_chunk_gates(vecB, vecM, vecMDen, vecSeg, gate_base, start, m0, qk_scale, L_INTRA,
                                           L_INTER, HAS_SEGMENTS)
            q = step_rows(matQ, gate_base + start, offs_q, mask_q, DHQK, L_INTER)
            dnq = tl.load(vecDNQ + gate_base + offs_t)
            dn = dn * decay + tl.sum(q.to(tl.float32) * (coef * dnq)[:, None], axis=0)
        tl.store(dn_base + chunk * DHQK + offs_q, dn, mask=mask_q)


@triton.jit
def _chunk_tile(matS, bh, offs_t, offs_j, chunk_start, S: tl.constexpr, L: tl.constexpr):
    """The (len(offs_t), len(offs_j)) tile of a materialised (BH, S, L) score buffer: rows t, steps j of
    the chunk that starts at ``chunk_start``."""
    return tl.load(matS + bh * S * L + offs_t[:, None] * L + (offs_j - chunk_start)[None, :])


@triton.jit
def scores_bw_kernel(
    matQ, matK, matV, matDH, vecDNQ, vecB, vecI, vecMDen,  # inputs
    matDS, matP,  # outputs (BH, S, L) in q's dtype
    qk_scale: tl.constexpr, S: tl.constexpr, DHQK: tl.constexpr, DHV: tl.constexpr,
    L: tl.constexpr, BT: tl.constexpr, BJ: tl.constexpr, BQ: tl.constexpr, BV: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """dS and P of BT rows against the BJ-blocks of their chunk up to the diagonal (zero for j > t).
    Grid (S // BT, BH); the dots contract DHV in blocks of BV (dS) and DHQK in blocks of BQ (P). With
    BT = the consumers' owned and BJ their looped step block, these are exactly the tiles dq reads and
    a superset of those dk and dv read; the rest of each row is never written nor read."""
    _scores_bw(matQ, matK, matV, matDH, vecDNQ, vecB, vecI, vecI, vecMDen, matDS, matP, qk_scale, S, DHQK, DHV, L,
               BT, BJ, BQ, BV, PRECISION, False)


@triton.jit
def scores_bw_segments_kernel(
    matQ, matK, matV, matDH, vecDNQ, vecB, vecI, vecSeg, vecMDen,  # inputs
    matDS, matP,  # outputs as scores_bw_kernel
    qk_scale: tl.constexpr, S: tl.constexpr, DHQK: tl.constexpr, DHV: tl.constexpr,
    L: tl.constexpr, BT: tl.constexpr, BJ: tl.constexpr, BQ: tl.constexpr, BV: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """:func:`scores_bw_kernel` with document resets (zero for pairs of different segments)."""
    _scores_bw(matQ, matK, matV, matDH, vecDNQ, vecB, vecI, vecSeg, vecMDen, matDS, matP, qk_scale, S, DHQK, DHV,
               L, BT, BJ, BQ, BV, PRECISION, True)


@triton.jit
def _scores_bw(
    matQ, matK, matV, matDH, vecDNQ, vecB, vecI, vecSeg, vecMDen, matDS, matP,
    qk_scale: tl.constexpr, S: tl.constexpr, DHQK: tl.constexpr, DHV: tl.constexpr,
    L: tl.constexpr, BT: tl.constexpr, BJ: tl.constexpr, BQ: tl.constexpr, BV: tl.constexpr,
    PRECISION: tl.constexpr, HAS_SEGMENTS: tl.constexpr,
):
    pid_t = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    chunk_start = (pid_t * BT) // L * L
    offs_t = pid_t * BT + tl.arange(0, BT)
    gate_base = bh * S
    b_t = tl.load(vecB + gate_base + offs_t)
    mden_t = tl.load(vecMDen + gate_base + offs_t)
    dnq_t = tl.load(vecDNQ + gate_base + offs_t)
    seg_t = _segment_of(vecSeg + gate_base, offs_t, HAS_SEGMENTS)
    out_rows = bh * S * L + offs_t[:, None] * L
    dtype = matDS.dtype.element_ty
    for j0 in range(chunk_start, pid_t * BT + BT, BJ):
        offs_j = j0 + tl.arange(0, BJ)
        gates = _gate_tile(b_t, mden_t, offs_t, tl.load(vecB + gate_base + offs_j),
                           tl.load(vecI + gate_base + offs_j), offs_j, seg_t,
                           _segment_of(vecSeg + gate_base, offs_j, HAS_SEGMENTS), HAS_SEGMENTS)
        dh_v = _rows_dot_tile(matDH + bh * S * DHV, matV + bh * S * DHV, offs_t, offs_j, DHV, BV, BT, BJ, PRECISION)
        q_k = _rows_dot_tile(matQ + bh * S * DHQK, matK + bh * S * DHQK, offs_t, offs_j, DHQK, BQ, BT, BJ, PRECISION)
        out = out_rows + (offs_j - chunk_start)[None, :]
        tl.store(matDS + out, ((dh_v + dnq_t[:, None]) * gates * qk_scale).to(dtype))
        tl.store(matP + out, (q_k * gates * qk_scale).to(dtype))


@triton.jit
def parallel_bw_dq_kernel(
    matK, matV, matDH, vecDNQ, vecB, vecI, vecMDen, matQ, matC_all, vecN_all, scaM_all, matDS,  # inputs
    matDQ, vecQDQ,  # outputs: dq (BH, S, DHQK), q . dq partial sums (cdiv(DHQK, BQ), BH, S) fp32
    qk_scale: tl.constexpr, S: tl.constexpr, DHQK: tl.constexpr, DHV: tl.constexpr,
    L: tl.constexpr, BT: tl.constexpr, BJ: tl.constexpr, BQ: tl.constexpr, BV: tl.constexpr,
    PRECISION: tl.constexpr, MATERIALISED: tl.constexpr,
):
    """dq for BT rows and BQ columns of q. Grid (cdiv(DHQK, BQ), S // BT, BH). ``matDS``: the
    materialised dS (read only when MATERIALISED; any buffer otherwise)."""
    _parallel_bw_dq(matK, matV, matDH, vecDNQ, vecB, vecI, vecI, vecMDen, matQ, matC_all, vecN_all, scaM_all,
                    matDS, matDQ, vecQDQ, qk_scale, S, DHQK, DHV, L, BT, BJ, BQ, BV, PRECISION, MATERIALISED, False)


@triton.jit
def parallel_bw_dq_segments_kernel(
    matK, matV, matDH, vecDNQ, vecB, vecI, vecSeg, vecMDen, matQ, matC_all, vecN_all, scaM_all, matDS,  # inputs
    matDQ, vecQDQ,  # outputs as parallel_bw_dq_kernel
    qk_scale: tl.constexpr, S: tl.constexpr, DHQK: tl.constexpr, DHV: tl.constexpr,
    L: tl.constexpr, BT: tl.constexpr, BJ: tl.constexpr, BQ: tl.constexpr, BV: tl.constexpr,
    PRECISION: tl.constexpr, MATERIALISED: tl.constexpr,
):
    """:func:`parallel_bw_dq_kernel` with document resets (pairs within one segment; the chunk's state
    only for rows before its first segment start)."""
    _parallel_bw_dq(matK, matV, matDH, vecDNQ, vecB, vecI, vecSeg, vecMDen, matQ, matC_all, vecN_all, scaM_all,
                    matDS, matDQ, vecQDQ, qk_scale, S, DHQK, DHV, L, BT, BJ, BQ, BV, PRECISION, MATERIALISED, True)


@triton.jit
def _parallel_bw_dq(
    matK, matV, matDH, vecDNQ, vecB, vecI, vecSeg, vecMDen, matQ, matC_all, vecN_all, scaM_all, matDS, matDQ,
    vecQDQ, qk_scale: tl.constexpr, S: tl.constexpr, DHQK: tl.constexpr, DHV: tl.constexpr,
    L: tl.constexpr, BT: tl.constexpr, BJ: tl.constexpr, BQ: tl.constexpr, BV: tl.constexpr,
    PRECISION: tl.constexpr, MATERIALISED: tl.constexpr, HAS_SEGMENTS: tl.constexpr,
):
    pid_q = tl.program_id(0)
    pid_t = tl.program_id(1)
    bh = tl.program_id(2).to(tl.int64)
    NC: tl.constexpr = S // L
    chunk = pid_t // (L // BT)
    chunk_start = chunk * L
    offs_t = pid_t * BT + tl.arange(0, BT)
    offs_q = pid_q * BQ + tl.arange(0, BQ)
    mask_q = offs_q < DHQK
    gate_base = bh * S
    k_base = matK + bh * S * DHQK
    v_base = matV + bh * S * DHV
    dh_base = matDH + bh * S * DHV
    b_t = tl.load(vecB + gate_base + offs_t)
    mden_t = tl.load(vecMDen + gate_base + offs_t)
    dnq_t = tl.load(vecDNQ + gate_base + offs_t)
    seg_t = _segment_of(vecSeg + gate_base, offs_t, HAS_SEGMENTS)

    m_prev = tl.load(scaM_all + bh * (NC + 1) + chunk)
    dq = _rows_times_state_tile(dh_base, matC_all + (bh * (NC + 1) + chunk) * DHQK * DHV, offs_t,
                                offs_q, mask_q, DHQK, DHV, BT, BQ, BV, True, PRECISION)
    n = tl.load(vecN_all + (bh * (NC + 1) + chunk) * DHQK + offs_q, mask=mask_q, other=0.0)
    dq = dq + dnq_t[:, None] * n[None, :]
    log_inter = b_t + m_prev - mden_t
    if HAS_SEGMENTS:  # rows after a segment start in the chunk do not see its state
        log_inter = tl.where(seg_t == 0, log_inter, -float("inf"))
    dq = dq * (qk_scale * tl.exp(log_inter))[:, None]
    for j0 in range(chunk_start, pid_t * BT + BT, BJ):
        offs_j = j0 + tl.arange(0, BJ)
        k_j = tl.load(k_base + offs_j[:, None] * DHQK + offs_q[None, :], mask=mask_q[None, :], other=0.0)
        if MATERIALISED:
            ds = _chunk_tile(matDS, bh, offs_t, offs_j, chunk_start, S, L)
        else:
            gates = _gate_tile(b_t, mden_t, offs_t, tl.load(vecB + gate_base + offs_j),
                               tl.load(vecI + gate_base + offs_j), offs_j, seg_t,
                               _segment_of(vecSeg + gate_base, offs_j, HAS_SEGMENTS), HAS_SEGMENTS)
            dh_v = _rows_dot_tile(dh_base, v_base, offs_t, offs_j, DHV, BV, BT, BJ, PRECISION)
            ds = ((dh_v + dnq_t[:, None]) * gates * qk_scale).to(k_j.dtype)
        dq = tl.dot(ds, k_j, acc=dq, input_precision=PRECISION)

    q_ptrs = matQ + bh * S * DHQK + offs_t[:, None] * DHQK + offs_q[None, :]
    tl.store(matDQ + bh * S * DHQK + offs_t[:, None] * DHQK + offs_q[None, :],
             dq.to(matDQ.dtype.element_ty), mask=mask_q[None, :])
    q = tl.load(q_ptrs, mask=mask_q[None, :], other=0.0).to(tl.float32)
    tl.store(vecQDQ + (pid_q * tl.num_programs(2) + bh) * S + offs_t, tl.sum(q * dq, axis=1))


@triton.jit
def _key_block(vecB_bh, vecI_bh, vecSeg_bh, vecM_bh, pid_j, L: tl.constexpr, BJ: tl.constexpr,
               HAS_SEGMENTS: tl.constexpr):
    """The BJ key steps j of program ``pid_j``: (offs_j, b_j, i_j, seg_j, chunk, chunk_end, w_j), with
    w_j = exp(g - b_j + i_j - m_end) the weight of step j in the state after its chunk (0 outside the
    chunk's last segment) and seg_j as :func:`_segment_of` gives it."""
    chunk = pid_j // (L // BJ)
    chunk_end = chunk * L + L
    offs_j = pid_j * BJ + tl.arange(0, BJ)
    b_j = tl.load(vecB_bh + offs_j)
    i_j = tl.load(vecI_bh + offs_j)
    seg_j = _segment_of(vecSeg_bh, offs_j, HAS_SEGMENTS)
    log_w = tl.load(vecB_bh + chunk_end - 1) - b_j + i_j - tl.load(vecM_bh + chunk_end - 1)
    if HAS_SEGMENTS:
        log_w = tl.where(seg_j == tl.load(vecSeg_bh + chunk_end - 1), log_w, -float("inf"))
    return offs_j, b_j, i_j, seg_j, chunk, chunk_end, tl.exp(log_w)


@triton.jit
def parallel_bw_dk_dv_kernel(
    matQ, matK, matV, matDH, vecDNQ, vecB, vecI, vecMDen, vecM, matDC_all, vecDN_all, matS,  # inputs
    matDX, vecKDK,  # outputs: dk (BH, S, DHQK) or dv (BH, S, DHV); for dk, k . dk partial sums
    qk_scale: tl.constexpr, S: tl.constexpr, DHQK: tl.constexpr, DHV: tl.constexpr,
    L: tl.constexpr, BJ: tl.constexpr, BT: tl.constexpr, BOWN: tl.constexpr, BLOOP: tl.constexpr,
    FOR_DK: tl.constexpr, PRECISION: tl.constexpr, MATERIALISED: tl.constexpr,
):
    """dk (FOR_DK) or dv for BJ rows and BOWN columns. Grid (cdiv(DHQK or DHV, BOWN), S // BJ, BH).

    Both loop over the same (t >= j) tiles with the same gate tile; dk contracts dh_t . v_j (over
    DHV) and multiplies q_t, dv contracts q_t . k_j (over DHQK) and multiplies dh_t; the other
    head dim is looped over in blocks of BLOOP. ``vecKDK`` (cdiv(DHQK, BOWN), BH, S) fp32 is written
    only for dk. ``matS``: the materialised dS (dk) or P (dv), read only when MATERIALISED (any buffer
    otherwise).
    """
    _parallel_bw_dk_dv(matQ, matK, matV, matDH, vecDNQ, vecB, vecI, vecI, vecMDen, vecM, matDC_all, vecDN_all,
                       matS, matDX, vecKDK, qk_scale, S, DHQK, DHV, L, BJ, BT, BOWN, BLOOP, FOR_DK, PRECISION,
                       MATERIALISED, False)


@triton.jit
def parallel_bw_dk_dv_segments_kernel(
    matQ, matK, matV, matDH, vecDNQ, vecB, vecI, vecSeg, vecMDen, vecM, matDC_all, vecDN_all, matS,  # inputs
    matDX, vecKDK,  # outputs as parallel_bw_dk_dv_kernel
    qk_scale: tl.constexpr, S: tl.constexpr, DHQK: tl.constexpr, DHV: tl.constexpr,
    L: tl.constexpr, BJ: tl.constexpr, BT: tl.constexpr, BOWN: tl.constexpr, BLOOP: tl.constexpr,
    FOR_DK: tl.constexpr, PRECISION: tl.constexpr, MATERIALISED: tl.constexpr,
):
    """:func:`parallel_bw_dk_dv_kernel` with document resets (pairs within one segment; the state after
    the chunk only for steps of its last segment)."""
    _parallel_bw_dk_dv(matQ, matK, matV, matDH, vecDNQ, vecB, vecI, vecSeg, vecMDen, vecM, matDC_all, vecDN_all,
                       matS, matDX, vecKDK, qk_scale, S, DHQK, DHV, L, BJ, BT, BOWN, BLOOP, FOR_DK, PRECISION,
                       MATERIALISED, True)


@triton.jit
def _parallel_bw_dk_dv(
    matQ, matK, matV, matDH, vecDNQ, vecB, vecI, vecSeg, vecMDen, vecM, matDC_all, vecDN_all, matS, matDX, vecKDK,
    qk_scale: tl.constexpr, S: tl.constexpr, DHQK: tl.constexpr, DHV: tl.constexpr,
    L: tl.constexpr, BJ: tl.constexpr, BT: tl.constexpr, BOWN: tl.constexpr, BLOOP: tl.constexpr,
    FOR_DK: tl.constexpr, PRECISION: tl.constexpr, MATERIALISED: tl.constexpr, HAS_SEGMENTS: tl.constexpr,
):
    pid_own = tl.program_id(0)
    pid_j = tl.program_id(1)
    bh = tl.program_id(2).to(tl.int64)
    NC: tl.constexpr = S // L
    D_OWN: tl.constexpr = DHQK if FOR_DK else DHV
    vecB_bh, vecM_bh, vecMDen_bh = vecB + bh * S, vecM + bh * S, vecMDen + bh * S
    vecSeg_bh = vecSeg + bh * S
    offs_j, b_j, i_j, seg_j, chunk, chunk_end, w_j = _key_block(vecB_bh, vecI + bh * S, vecSeg_bh, vecM_bh, pid_j, L,
                                                                BJ, HAS_SEGMENTS)
    offs_own = pid_own * BOWN + tl.arange(0, BOWN)
    mask_own = offs_own < D_OWN
    q_base = matQ + bh * S * DHQK
    k_base = matK + bh * S * DHQK
    v_base = matV + bh * S * DHV
    dh_base = matDH + bh * S * DHV
    # dk: scores dh_t . v_j (+ dnq_t) times q_t; dv: scores q_t . k_j times dh_t.
    if FOR_DK:
        score_a, score_b, score_width, rows_base, state_rows = dh_base, v_base, DHV, q_base, v_base
    else:
        score_a, score_b, score_width, rows_base, state_rows = q_base, k_base, DHQK, dh_base, k_base

    # Inter-chunk part: dk = w_j (v_j dC^T + dn), dv = w_j k_j dC, dC the state after the chunk.
    state_index = bh * (NC + 1) + chunk + 1
    acc = _rows_times_state_tile(state_rows, matDC_all + state_index * DHQK * DHV, offs_j, offs_own, mask_own,
                                 DHQK, DHV, BJ, BOWN, BLOOP, FOR_DK, PRECISION)
    if FOR_DK:
        acc += tl.load(vecDN_all + state_index * DHQK + offs_own, mask=mask_own, other=0.0)[None, :]
    acc *= w_j[:, None]
    for t0 in range((pid_j * BJ) // BT * BT, chunk_end, BT):
        offs_t = t0 + tl.arange(0, BT)
        rows = tl.load(rows_base + offs_t[:, None] * D_OWN + offs_own[None, :], mask=mask_own[None, :], other=0.0)
        if MATERIALISED:
            tile = _chunk_tile(matS, bh, offs_t, offs_j, chunk_end - L, S, L)
        else:
            gates = _gate_tile(tl.load(vecB_bh + offs_t), tl.load(vecMDen_bh + offs_t), offs_t, b_j, i_j, offs_j,
                               _segment_of(vecSeg_bh, offs_t, HAS_SEGMENTS), seg_j, HAS_SEGMENTS)
            scores = _rows_dot_tile(score_a, score_b, offs_t, offs_j, score_width, BLOOP, BT, BJ, PRECISION)
            if FOR_DK:
                scores += tl.load(vecDNQ + bh * S + offs_t)[:, None]
            tile = (scores * gates * qk_scale).to(rows.dtype)
        acc = tl.dot(tl.trans(tile), rows, acc=acc, input_precision=PRECISION)

    tl.store(matDX + bh * S * D_OWN + offs_j[:, None] * D_OWN + offs_own[None, :], acc.to(matDX.dtype.element_ty),
             mask=mask_own[None, :])
    if FOR_DK:
        k = tl.load(k_base + offs_j[:, None] * DHQK + offs_own[None, :], mask=mask_own[None, :], other=0.0)
        tl.store(vecKDK + (pid_own * tl.num_programs(2) + bh) * S + offs_j, tl.sum(k.to(tl.float32) * acc, axis=1))
