"""Triton kernels of the chunkwise mLSTM forward (docs/math.md), launched by chunkwise_fw.py.

Per (batch, head) ``bh``, all buffers C-contiguous, gates and states fp32:

* ``vecB (B, NH, S)``: the chunk-local log-forget cumsum, the inclusive cumulative sum of log(sigmoid(f))
  restarted at every intra chunk;
* ``vecI (B, NH, S)``: the raw input gate;
* ``vecSeg (B, NH, S)`` int32 (the ``*_segments_kernel`` variants only): the chunk-local segment
  counter, the number of segment starts in the intra chunk up to and including the step (docs/math.md
  section 5.3); ``vecB`` then also restarts at every segment start;
* ``matC_all (B, NH, NC+1, DHQK, DHV)``, ``vecN_all (B, NH, NC+1, DHQK)``, ``scaM_all (B, NH, NC+1)``:
  the state at every intra-chunk boundary, index 0 = the initial state; ``matC_all`` in fp32 or in the
  input dtype (the launcher's choice: the kernels carry C in fp32 and round it when storing), n and m fp32;
* ``matC_last (B, NH, DHQK, DHV)`` fp32: the last state C, also when ``matC_all`` is 16-bit.

Head dims need not be powers of two: DH blocks are padded and their loads/stores masked. Chunk and
block sizes are powers of two >= 16 (the smallest ``tl.dot`` tile). Dots take q/k/v's dtype (states are
cast to it) and accumulate in fp32; ``DOT_PRECISION`` only matters for fp32 operands.

Each kernel is a thin entry around one body with a ``HAS_SEGMENTS`` constexpr: the entries without
segments keep their names and compile to the same code as before resets existed. Not run through
``ruff format``: it would put each of the kernels' many parameters on a line of its own.
"""

# fmt: off
import triton
import triton.language as tl


@triton.jit
def recurrent_fw_kernel(
    matK, matV, vecB, vecI, matC_initial, vecN_initial, scaM_initial,  # inputs
    matC_all, vecN_all, scaM_all, matC_last,  # outputs
    S: tl.constexpr, DHQK: tl.constexpr, DHV: tl.constexpr, NC: tl.constexpr,
    L_INTRA: tl.constexpr, L_INTER: tl.constexpr, BLOCK_DHQK: tl.constexpr, BLOCK_DHV: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """Grid (DHQK blocks, DHV blocks, B*NH): walks the chunks of L_INTER steps in order with C, n, m
    in registers and stores them at every L_INTRA boundary. For a chunk with local cumulative log
    forget gate b (from b_prev, the value before the chunk) and total g = b_end - b_prev:
    a_j = i_j + b_end - b_j, m' = max(g + m, max_j a_j), C' = e^(g+m-m') C + K^T diag(e^(a-m')) V."""
    _recurrent_fw(matK, matV, vecB, vecI, vecI, matC_initial, vecN_initial, scaM_initial, matC_all, vecN_all,
                  scaM_all, matC_last, S, DHQK, DHV, NC, L_INTRA, L_INTER, BLOCK_DHQK, BLOCK_DHV, DOT_PRECISION, False)


@triton.jit
def recurrent_fw_segments_kernel(
    matK, matV, vecB, vecI, vecSeg, matC_initial, vecN_initial, scaM_initial,  # inputs
    matC_all, vecN_all, scaM_all, matC_last,  # outputs
    S: tl.constexpr, DHQK: tl.constexpr, DHV: tl.constexpr, NC: tl.constexpr,
    L_INTRA: tl.constexpr, L_INTER: tl.constexpr, BLOCK_DHQK: tl.constexpr, BLOCK_DHV: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """:func:`recurrent_fw_kernel` with document resets: a chunk holding a segment start drops the
    carried state (decay 0), takes only the steps of its last segment and restarts m from the zero
    state, m' = max(b_end, max_{last segment} a_j) with b restarted at the segment start."""
    _recurrent_fw(matK, matV, vecB, vecI, vecSeg, matC_initial, vecN_initial, scaM_initial, matC_all, vecN_all,
                  scaM_all, matC_last, S, DHQK, DHV, NC, L_INTRA, L_INTER, BLOCK_DHQK, BLOCK_DHV, DOT_PRECISION, True)


@triton.jit
def _recurrent_fw(
    matK, matV, vecB, vecI, vecSeg, matC_initial, vecN_initial, scaM_initial, matC_all, vecN_all, scaM_all,
    matC_last, S: tl.constexpr, DHQK: tl.constexpr, DHV: tl.constexpr, NC: tl.constexpr,
    L_INTRA: tl.constexpr, L_INTER: tl.constexpr, BLOCK_DHQK: tl.constexpr, BLOCK_DHV: tl.constexpr,
    DOT_PRECISION: tl.constexpr, HAS_SEGMENTS: tl.constexpr,
):
    pid_q, pid_v, bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    offs_q = pid_q * BLOCK_DHQK + tl.arange(0, BLOCK_DHQK)
    offs_v = pid_v * BLOCK_DHV + tl.arange(0, BLOCK_DHV)
    mask_q, mask_v = offs_q < DHQK, offs_v < DHV
    offs_c = offs_q[:, None] * DHV + offs_v[None, :]
    mask_c = mask_q[:, None] & mask_v[None, :]
    stores_n = pid_v == 0
    stores_m = stores_n & (pid_q == 0)

    matC = tl.load(matC_initial + bh * DHQK * DHV + offs_c, mask=mask_c, other=0.0)
    vecN = tl.load(vecN_initial + bh * DHQK + offs_q, mask=mask_q, other=0.0)
    scaM = tl.load(scaM_initial + bh)
    tl.store(matC_all + bh * (NC + 1) * DHQK * DHV + offs_c, matC.to(matC_all.dtype.element_ty), mask=mask_c)
    tl.store(vecN_all + bh * (NC + 1) * DHQK + offs_q, vecN, mask=mask_q & stores_n)
    tl.store(scaM_all + bh * (NC + 1), scaM, mask=stores_m)

    # One flat loop over the inter chunks (so the compiler can prefetch k, v of the next chunk); the
    # state is stored after the last inter chunk of every intra chunk.
    for step in range(S // L_INTER):
        t0 = step * L_INTER
        matC, vecN, scaM = _state_step(matK, matV, vecB, vecI, vecSeg, bh * S + t0, t0 % L_INTRA != 0, matC, vecN,
                                       scaM, offs_q, offs_v, mask_q, mask_v, DHQK, DHV, L_INTER, DOT_PRECISION,
                                       HAS_SEGMENTS)
        ends_intra = (t0 + L_INTER) % L_INTRA == 0
        index = bh * (NC + 1) + (t0 + L_INTER) // L_INTRA
        tl.store(matC_all + index * DHQK * DHV + offs_c, matC.to(matC_all.dtype.element_ty), mask=mask_c & ends_intra)
        tl.store(vecN_all + index * DHQK + offs_q, vecN, mask=mask_q & stores_n & ends_intra)
        tl.store(scaM_all + index, scaM, mask=stores_m & ends_intra)
    tl.store(matC_last + bh * DHQK * DHV + offs_c, matC, mask=mask_c)


@triton.jit
def _state_step(matK, matV, vecB, vecI, vecSeg, gates, continues, matC, vecN, scaM, offs_q, offs_v, mask_q, mask_v,
                DHQK: tl.constexpr, DHV: tl.constexpr, L_INTER: tl.constexpr, DOT_PRECISION: tl.constexpr,
                HAS_SEGMENTS: tl.constexpr):
    """(C, n, m) after the L_INTER steps from flat step ``gates``; ``continues``: the steps do not start an
    intra chunk (vecB and the segment counter carry on from the step before). C and n cover the head-dim
    entries ``offs_q`` x ``offs_v`` (masked by ``mask_q``, ``mask_v``); fp32 throughout."""
    offs_t = tl.arange(0, L_INTER)
    b = tl.load(vecB + gates + offs_t)
    b_end = tl.load(vecB + gates + L_INTER - 1)
    b_prev = tl.load(vecB + gates - 1, mask=continues, other=0.0)
    a = tl.load(vecI + gates + offs_t) + b_end - b
    log_carry = b_end - b_prev + scaM  # log weight of the carried state in the new one
    if HAS_SEGMENTS:  # a segment start in this chunk: the zero state (m = 0) replaces the carried one
        seg = tl.load(vecSeg + gates + offs_t)
        seg_end = tl.load(vecSeg + gates + L_INTER - 1)
        restarted = seg_end != tl.load(vecSeg + gates - 1, mask=continues, other=0)
        log_carry = tl.where(restarted, b_end, log_carry)
        a = tl.where(seg == seg_end, a, float("-inf"))
    m_new = tl.maximum(log_carry, tl.max(a, axis=0))
    decay = tl.exp(log_carry - m_new)
    if HAS_SEGMENTS:
        decay = tl.where(restarted, 0.0, decay)
    weight = tl.exp(a - m_new)
    k = tl.load(matK + (gates + offs_t)[:, None] * DHQK + offs_q[None, :], mask=mask_q[None, :], other=0.0)
    v = tl.load(matV + (gates + offs_t)[:, None] * DHV + offs_v[None, :], mask=mask_v[None, :], other=0.0)
    weighted_v = (v * weight[:, None]).to(v.dtype)
    matC = decay * matC + tl.dot(tl.trans(k), weighted_v, input_precision=DOT_PRECISION)
    vecN = decay * vecN + tl.sum(k.to(tl.float32) * weight[:, None], axis=0)
    return matC, vecN, m_new


@triton.jit
def parallel_fw_kernel(
    matQ, matK, matV, vecB, vecI, matC_all, vecN_all, scaM_all,  # inputs
    matH, vecDen_out, vecM_out, vecNQ_out,  # outputs
    S: tl.constexpr, DHQK: tl.constexpr, DHV: tl.constexpr, NC: tl.constexpr, L: tl.constexpr,
    BLOCK_LQ: tl.constexpr, BLOCK_LK: tl.constexpr, BLOCK_DHQK: tl.constexpr, BLOCK_DHV: tl.constexpr,
    QK_SCALE: tl.constexpr, EPS: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Grid (DHV blocks, NC * L / BLOCK_LQ, B*NH): BLOCK_LQ rows i of one chunk of L steps, from the
    state (C, n, m) at the chunk start. With b the chunk-local cumulative log forget gate,
    m_i = max(b_i + m, max_{j<=i}(b_i - b_j + i_j)) (the step recurrence's m_i exactly) and
    num_i = s e^(b_i+m-m_i) q_i C + sum_{j<=i} s (q_i.k_j) e^(b_i-b_j+i_j-m_i) v_j; likewise nq_i with
    n and 1 for C and v_j. Writes h = num / (max(|nq|, e^-m_i) + eps), den, m_i and the signed nq."""
    _parallel_fw(matQ, matK, matV, vecB, vecI, vecI, matC_all, vecN_all, scaM_all, matH, vecDen_out, vecM_out,
                 vecNQ_out, S, DHQK, DHV, NC, L, BLOCK_LQ, BLOCK_LK, BLOCK_DHQK, BLOCK_DHV, QK_SCALE, EPS,
                 DOT_PRECISION, False)


@triton.jit
def parallel_fw_segments_kernel(
    matQ, matK, matV, vecB, vecI, vecSeg, matC_all, vecN_all, scaM_all,  # inputs
    matH, vecDen_out, vecM_out, vecNQ_out,  # outputs
    S: tl.constexpr, DHQK: tl.constexpr, DHV: tl.constexpr, NC: tl.constexpr, L: tl.constexpr,
    BLOCK_LQ: tl.constexpr, BLOCK_LK: tl.constexpr, BLOCK_DHQK: tl.constexpr, BLOCK_DHV: tl.constexpr,
    QK_SCALE: tl.constexpr, EPS: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """:func:`parallel_fw_kernel` with document resets: pairs (i, j) only within one segment, the chunk's
    state only for rows before the chunk's first segment start; later rows start from the zero state
    (m = 0 in the max for m_i)."""
    _parallel_fw(matQ, matK, matV, vecB, vecI, vecSeg, matC_all, vecN_all, scaM_all, matH, vecDen_out, vecM_out,
                 vecNQ_out, S, DHQK, DHV, NC, L, BLOCK_LQ, BLOCK_LK, BLOCK_DHQK, BLOCK_DHV, QK_SCALE, EPS,
                 DOT_PRECISION, True)


@triton.jit
def _parallel_fw(
    matQ, matK, matV, vecB, vecI, vecSeg, matC_all, vecN_all, scaM_all, matH, vecDen_out, vecM_out, vecNQ_out,
    S: tl.constexpr, DHQK: tl.constexpr, DHV: tl.constexpr, NC: tl.constexpr, L: tl.constexpr,
    BLOCK_LQ: tl.constexpr, BLOCK_LK: tl.constexpr, BLOCK_DHQK: tl.constexpr, BLOCK_DHV: tl.constexpr,
    QK_SCALE: tl.constexpr, EPS: tl.constexpr, DOT_PRECISION: tl.constexpr, HAS_SEGMENTS: tl.constexpr,
):
    pid_v, pid_l, bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    chunk = pid_l // (L // BLOCK_LQ)
    row0 = (pid_l % (L // BLOCK_LQ)) * BLOCK_LQ
    offs_d = tl.arange(0, BLOCK_DHQK)
    offs_v = pid_v * BLOCK_DHV + tl.arange(0, BLOCK_DHV)
    mask_v = offs_v < DHV
    t_chunk = bh * S + chunk * L  # flat (bh, t) index of the chunk's first step
    t_rows = t_chunk + row0 + tl.arange(0, BLOCK_LQ)  # flat index of the rows
    state = bh * (NC + 1) + chunk
    m_chunk = tl.load(scaM_all + state)
    b_rows, seg_rows, m_rows = _row_stabiliser(vecB, vecI, vecSeg, t_chunk, row0, m_chunk, BLOCK_LQ, BLOCK_LK,
                                               HAS_SEGMENTS)

    # Inter-chunk part: s q_i C and s q_i . n (weighted by _intra_chunk_and_store).
    num = tl.zeros([BLOCK_LQ, BLOCK_DHV], tl.float32)
    nq = tl.zeros([BLOCK_LQ], tl.float32)
    for d0 in range(0, DHQK, BLOCK_DHQK):
        mask_d = d0 + offs_d < DHQK
        q = tl.load(matQ + t_rows[:, None] * DHQK + d0 + offs_d[None, :], mask=mask_d[None, :], other=0.0)
        c = tl.load(matC_all + (state * DHQK + d0 + offs_d)[:, None] * DHV + offs_v[None, :],
                    mask=mask_d[:, None] & mask_v[None, :], other=0.0)
        n = tl.load(vecN_all + state * DHQK + d0 + offs_d, mask=mask_d, other=0.0)
        num += tl.dot(q, c.to(q.dtype), input_precision=DOT_PRECISION)
        nq += tl.sum(q.to(tl.float32) * n[None, :], axis=1)
    _intra_chunk_and_store(matQ, matK, matV, vecB, vecI, vecSeg, matH, vecDen_out, vecM_out, vecNQ_out, num, nq,
                           b_rows, seg_rows, m_rows, m_chunk, t_chunk, row0, offs_v, pid_v == 0, DHQK, DHV,
                           BLOCK_LQ, BLOCK_LK, BLOCK_DHQK, QK_SCALE, EPS, DOT_PRECISION, HAS_SEGMENTS)


@triton.jit
def _row_stabiliser(vecB, vecI, vecSeg, t_chunk, row0, m_chunk, BLOCK_LQ: tl.constexpr, BLOCK_LK: tl.constexpr,
                    HAS_SEGMENTS: tl.constexpr):
    """(b_rows, seg_rows, m_rows) of the BLOCK_LQ rows from ``row0`` of the chunk starting at flat step
    ``t_chunk`` with stabiliser ``m_chunk``: m_i is the row max of the same masked log weights that
    the intra part exponentiates (so every exponent is <= 0 after rounding too, even for huge gates).
    seg_rows is the chunk-local segment counter (HAS_SEGMENTS), else b_rows (never read)."""
    rows = tl.arange(0, BLOCK_LQ)
    cols = tl.arange(0, BLOCK_LK)
    b_rows = tl.load(vecB + t_chunk + row0 + rows)
    m_rows = b_rows + m_chunk
    seg_rows = b_rows
    if HAS_SEGMENTS:  # rows after a segment start in the chunk begin from the zero state (m = 0)
        seg_rows = tl.load(vecSeg + t_chunk + row0 + rows)
        m_rows = tl.where(seg_rows == 0, m_rows, b_rows)
    for col0 in range(0, row0 + BLOCK_LQ, BLOCK_LK):
        t_cols = t_chunk + col0 + cols
        log_w = b_rows[:, None] - tl.load(vecB + t_cols)[None, :] + tl.load(vecI + t_cols)[None, :]
        causal = (row0 + rows)[:, None] >= (col0 + cols)[None, :]
        if HAS_SEGMENTS:
            causal = causal & (seg_rows[:, None] == tl.load(vecSeg + t_cols)[None, :])
        m_rows = tl.maximum(m_rows, tl.max(tl.where(causal, log_w, float("-inf")), axis=1))
    return b_rows, seg_rows, m_rows


@triton.jit
def _intra_chunk_and_store(
    matQ, matK, matV, vecB, vecI, vecSeg, matH, vecDen_out, vecM_out, vecNQ_out, num, nq, b_rows, seg_rows, m_rows,
    m_chunk, t_chunk, row0, offs_v, stores_vectors, DHQK: tl.constexpr, DHV: tl.constexpr, BLOCK_LQ: tl.constexpr,
    BLOCK_LK: tl.constexpr, BLOCK_DHQK: tl.constexpr, QK_SCALE: tl.constexpr, EPS: tl.constexpr,
    DOT_PRECISION: tl.constexpr, HAS_SEGMENTS: tl.constexpr,
):
    """Weights the inter-chunk sums ``num`` = q_i C, ``nq`` = q_i . n (unscaled) by s e^(b_i + m - m_i),
    adds the intra-chunk part over column blocks j <= i and stores h = num / (max(|nq|, e^-m_i) + eps)
    for the DHV columns ``offs_v``; den, m_i and the signed nq where ``stores_vectors``."""
    rows = tl.arange(0, BLOCK_LQ)
    cols = tl.arange(0, BLOCK_LK)
    offs_d = tl.arange(0, BLOCK_DHQK)
    mask_v = offs_v < DHV
    t_rows = t_chunk + row0 + rows
    log_inter = b_rows + m_chunk - m_rows
    if HAS_SEGMENTS:
        log_inter = tl.where(seg_rows == 0, log_inter, float("-inf"))
    inter_weight = QK_SCALE * tl.exp(log_inter)
    num *= inter_weight[:, None]
    nq *= inter_weight
    for col0 in range(0, row0 + BLOCK_LQ, BLOCK_LK):
        t_cols = t_chunk + col0 + cols
        scores = tl.zeros([BLOCK_LQ, BLOCK_LK], tl.float32)
        for d0 in range(0, DHQK, BLOCK_DHQK):
            mask_d = d0 + offs_d < DHQK
            q = tl.load(matQ + t_rows[:, None] * DHQK + d0 + offs_d[None, :], mask=mask_d[None, :], other=0.0)
            k = tl.load(matK + t_cols[:, None] * DHQK + d0 + offs_d[None, :], mask=mask_d[None, :], other=0.0)
            scores += tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        log_w = b_rows[:, None] - tl.load(vecB + t_cols)[None, :] + tl.load(vecI + t_cols)[None, :]
        causal = (row0 + rows)[:, None] >= (col0 + cols)[None, :]
        if HAS_SEGMENTS:
            causal = causal & (seg_rows[:, None] == tl.load(vecSeg + t_cols)[None, :])
        log_w = tl.where(causal, log_w - m_rows[:, None], float("-inf"))
        weighted = scores * QK_SCALE * tl.exp(log_w)
        nq += tl.sum(weighted, axis=1)
        v = tl.load(matV + t_cols[:, None] * DHV + offs_v[None, :], mask=mask_v[None, :], other=0.0)
        num += tl.dot(weighted.to(v.dtype), v, input_precision=DOT_PRECISION)

    den = tl.maximum(tl.abs(nq), tl.exp(-m_rows))
    h = num / (den + EPS)[:, None]
    tl.store(matH + t_rows[:, None] * DHV + offs_v[None, :], h.to(matH.dtype.element_ty), mask=mask_v[None, :])
    tl.store(vecDen_out + t_rows, den.to(vecDen_out.dtype.element_ty), mask=stores_vectors)
    tl.store(vecM_out + t_rows, m_rows.to(vecM_out.dtype.element_ty), mask=stores_vectors)
    tl.store(vecNQ_out + t_rows, nq, mask=stores_vectors)


@triton.jit
def fused_fw_kernel(
    matQ, matK, matV, vecB, vecI, matC_initial, vecN_initial, scaM_initial,  # inputs
    matH, vecDen_out, vecM_out, vecNQ_out, matC_all, vecN_all, scaM_all, matC_last,  # outputs
    S: tl.constexpr, DHQK: tl.constexpr, DHV: tl.constexpr, NC: tl.constexpr, L: tl.constexpr,
    BLOCK_LQ: tl.constexpr, BLOCK_LK: tl.constexpr, BLOCK_DHQK: tl.constexpr, DHQK_PAD: tl.constexpr,
    BLOCK_DHV: tl.constexpr, QK_SCALE: tl.constexpr, EPS: tl.constexpr, DOT_PRECISION: tl.constexpr,
    STORE_STATES: tl.constexpr,
):
    """Grid (DHV blocks, B*NH): the whole forward in one program per head and BLOCK_DHV columns of v.
    It walks the chunks of L steps in order with the state (C (DHQK_PAD x BLOCK_DHV), n, m) in
    registers: the outputs of a chunk's rows (as :func:`parallel_fw_kernel`, in blocks of BLOCK_LQ rows)
    from the carried state, then the state update (as :func:`recurrent_fw_kernel`, in steps of BLOCK_LK).
    n and m are stored at every chunk boundary; C only with STORE_STATES (else ``matC_all`` is never
    touched), never read back. ``matC_last``: the last C, fp32."""
    _fused_fw(matQ, matK, matV, vecB, vecI, vecI, matC_initial, vecN_initial, scaM_initial, matH, vecDen_out,
              vecM_out, vecNQ_out, matC_all, vecN_all, scaM_all, matC_last, S, DHQK, DHV, NC, L, BLOCK_LQ, BLOCK_LK,
              BLOCK_DHQK, DHQK_PAD, BLOCK_DHV, QK_SCALE, EPS, DOT_PRECISION, STORE_STATES, False)


@triton.jit
def fused_fw_segments_kernel(
    matQ, matK, matV, vecB, vecI, vecSeg, matC_initial, vecN_initial, scaM_initial,  # inputs
    matH, vecDen_out, vecM_out, vecNQ_out, matC_all, vecN_all, scaM_all, matC_last,  # outputs
    S: tl.constexpr, DHQK: tl.constexpr, DHV: tl.constexpr, NC: tl.constexpr, L: tl.constexpr,
    BLOCK_LQ: tl.constexpr, BLOCK_LK: tl.constexpr, BLOCK_DHQK: tl.constexpr, DHQK_PAD: tl.constexpr,
    BLOCK_DHV: tl.constexpr, QK_SCALE: tl.constexpr, EPS: tl.constexpr, DOT_PRECISION: tl.constexpr,
    STORE_STATES: tl.constexpr,
):
    """:func:`fused_fw_kernel` with document resets (as the two kernels it fuses)."""
    _fused_fw(matQ, matK, matV, vecB, vecI, vecSeg, matC_initial, vecN_initial, scaM_initial, matH, vecDen_out,
              vecM_out, vecNQ_out, matC_all, vecN_all, scaM_all, matC_last, S, DHQK, DHV, NC, L, BLOCK_LQ, BLOCK_LK,
              BLOCK_DHQK, DHQK_PAD, BLOCK_DHV, QK_SCALE, EPS, DOT_PRECISION, STORE_STATES, True)


@triton.jit
def _fused_fw(
    matQ, matK, matV, vecB, vecI, vecSeg, matC_initial, vecN_initial, scaM_initial, matH, vecDen_out, vecM_out,
    vecNQ_out, matC_all, vecN_all, scaM_all, matC_last,
    S: tl.constexpr, DHQK: tl.constexpr, DHV: tl.constexpr, NC: tl.constexpr, L: tl.constexpr,
    BLOCK_LQ: tl.constexpr, BLOCK_LK: tl.constexpr, BLOCK_DHQK: tl.constexpr, DHQK_PAD: tl.constexpr,
    BLOCK_DHV: tl.constexpr, QK_SCALE: tl.constexpr, EPS: tl.constexpr, DOT_PRECISION: tl.constexpr,
    STORE_STATES: tl.constexpr, HAS_SEGMENTS: tl.constexpr,
):
    pid_v, bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    offs_q = tl.arange(0, DHQK_PAD)
    offs_v = pid_v * BLOCK_DHV + tl.arange(0, BLOCK_DHV)
    mask_q, mask_v = offs_q < DHQK, offs_v < DHV
    offs_c = offs_q[:, None] * DHV + offs_v[None, :]
    mask_c = mask_q[:, None] & mask_v[None, :]
    stores_n = pid_v == 0
    rows = tl.arange(0, BLOCK_LQ)

    matC = tl.load(matC_initial + bh * DHQK * DHV + offs_c, mask=mask_c, other=0.0)
    vecN = tl.load(vecN_initial + bh * DHQK + offs_q, mask=mask_q, other=0.0)
    scaM = tl.load(scaM_initial + bh)
    for chunk in range(NC):
        state = bh * (NC + 1) + chunk
        if STORE_STATES:
            tl.store(matC_all + state * DHQK * DHV + offs_c, matC.to(matC_all.dtype.element_ty), mask=mask_c)
        tl.store(vecN_all + state * DHQK + offs_q, vecN, mask=mask_q & stores_n)
        tl.store(scaM_all + state, scaM, mask=stores_n)
        t_chunk = bh * S + chunk * L
        matC_dot = matC.to(matQ.dtype.element_ty)
        for row0 in range(0, L, BLOCK_LQ):
            b_rows, seg_rows, m_rows = _row_stabiliser(vecB, vecI, vecSeg, t_chunk, row0, scaM, BLOCK_LQ, BLOCK_LK,
                                                       HAS_SEGMENTS)
            q = tl.load(matQ + (t_chunk + row0 + rows)[:, None] * DHQK + offs_q[None, :], mask=mask_q[None, :],
                        other=0.0)
            num = tl.dot(q, matC_dot, input_precision=DOT_PRECISION)
            nq = tl.sum(q.to(tl.float32) * vecN[None, :], axis=1)
            _intra_chunk_and_store(matQ, matK, matV, vecB, vecI, vecSeg, matH, vecDen_out, vecM_out, vecNQ_out, num,
                                   nq, b_rows, seg_rows, m_rows, scaM, t_chunk, row0, offs_v, stores_n, DHQK, DHV,
                                   BLOCK_LQ, BLOCK_LK, BLOCK_DHQK, QK_SCALE, EPS, DOT_PRECISION, HAS_SEGMENTS)
        for t0 in range(chunk * L, chunk * L + L, BLOCK_LK):
            matC, vecN, scaM = _state_step(matK, matV, vecB, vecI, vecSeg, bh * S + t0, t0 % L != 0, matC, vecN, scaM,
                                           offs_q, offs_v, mask_q, mask_v, DHQK, DHV, BLOCK_LK, DOT_PRECISION,
                                           HAS_SEGMENTS)
    if STORE_STATES:
        tl.store(matC_all + (bh * (NC + 1) + NC) * DHQK * DHV + offs_c, matC.to(matC_all.dtype.element_ty),
                 mask=mask_c)
    tl.store(vecN_all + (bh * (NC + 1) + NC) * DHQK + offs_q, vecN, mask=mask_q & stores_n)
    tl.store(scaM_all + bh * (NC + 1) + NC, scaM, mask=stores_n)
    tl.store(matC_last + bh * DHQK * DHV + offs_c, matC, mask=mask_c)
