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
* ``matC_last (B, NH, DHQK, DHV)`` fp32: the last state C, also when ``matC_all`` is 16-bit;
* ``matP (B, NH, S, L)`` in q's dtype (the materialised output stage only): row t holds the gated scores
  of step t against the steps of its chunk of L = chunk_size_intra, written by ``scores_fw_kernel`` and
  read by ``output_fw_kernel`` on and below the diagonal only.

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
    """Grid (DHQK blocks, DHV blocks + 1, B*NH): walks the chunks of L_INTER steps in order with the
    state in registers and stores it at every L_INTRA boundary; the programs of the extra DHV block walk
    n and m, the others C (so no program holds k both in shared memory for the C dot and in registers for
    the n sum). For a chunk with local cumulative log forget gate b (from b_prev, the value before the
    chunk) and total g = b_end - b_prev: a_j = i_j + b_end - b_j, m' = max(g + m, max_j a_j),
    C' = e^(g+m-m') C + K^T diag(e^(a-m')) V, n' = e^(g+m-m') n + K^T e^(a-m')."""
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
    if tl.program_id(1) == tl.cdiv(DHV, BLOCK_DHV):
        _normaliser_walk(matK, vecB, vecI, vecSeg, vecN_initial, scaM_initial, vecN_all, scaM_all, S, DHQK, NC,
                         L_INTRA, L_INTER, BLOCK_DHQK, HAS_SEGMENTS)
    else:
        _state_walk(matK, matV, vecB, vecI, vecSeg, matC_initial, scaM_initial, matC_all, matC_last, S, DHQK, DHV, NC,
                    L_INTRA, L_INTER, BLOCK_DHQK, BLOCK_DHV, DOT_PRECISION, HAS_SEGMENTS)


@triton.jit
def _chunk_gates(vecB, vecI, vecSeg, gates, continues, scaM, L_INTER: tl.constexpr, HAS_SEGMENTS: tl.constexpr):
    """(m', e^(g+m-m'), e^(a-m') (L_INTER,)) of the inter chunk whose first step has flat index ``gates``
    (``continues``: not the first chunk of its intra chunk, so b carries on from the step before)."""
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
    return m_new, decay, tl.exp(a - m_new)


@triton.jit
def step_rows(mat, first, offs_col, mask_col, WIDTH: tl.constexpr, L: tl.constexpr):
    """The (L, len(offs_col)) tile of a (.., WIDTH) buffer at flat rows first + [0, L), masked columns 0."""
    rows = first + tl.arange(0, L)
    return tl.load(mat + rows[:, None] * WIDTH + offs_col[None, :], mask=mask_col[None, :], other=0.0)


@triton.jit
def state_tile(pid_q, pid_v, DHQK: tl.constexpr, DHV: tl.constexpr, BLOCK_DHQK: tl.constexpr,
               BLOCK_DHV: tl.constexpr):
    """Tile (pid_q, pid_v) of a (DHQK, DHV) state: its row and column indices with their masks, and the
    flat offsets of its elements with their mask."""
    offs_q = pid_q * BLOCK_DHQK + tl.arange(0, BLOCK_DHQK)
    offs_v = pid_v * BLOCK_DHV + tl.arange(0, BLOCK_DHV)
    mask_q, mask_v = offs_q < DHQK, offs_v < DHV
    return offs_q, mask_q, offs_v, mask_v, offs_q[:, None] * DHV + offs_v[None, :], mask_q[:, None] & mask_v[None, :]


@triton.jit
def _state_walk(
    matK, matV, vecB, vecI, vecSeg, matC_initial, scaM_initial, matC_all, matC_last, S: tl.constexpr,
    DHQK: tl.constexpr, DHV: tl.constexpr, NC: tl.constexpr, L_INTRA: tl.constexpr, L_INTER: tl.constexpr,
    BLOCK_DHQK: tl.constexpr, BLOCK_DHV: tl.constexpr, DOT_PRECISION: tl.constexpr, HAS_SEGMENTS: tl.constexpr,
):
    pid_q, pid_v, bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    offs_q, mask_q, offs_v, mask_v, offs_c, mask_c = state_tile(pid_q, pid_v, DHQK, DHV, BLOCK_DHQK, BLOCK_DHV)

    matC = tl.load(matC_initial + bh * DHQK * DHV + offs_c, mask=mask_c, other=0.0)
    scaM = tl.load(scaM_initial + bh)
    tl.store(matC_all + bh * (NC + 1) * DHQK * DHV + offs_c, matC.to(matC_all.dtype.element_ty), mask=mask_c)

    # One flat loop over the inter chunks (so the compiler can prefetch k, v of the next chunk); the
    # state is stored after the last inter chunk of every intra chunk.
    for step in range(S // L_INTER):
        t0 = step * L_INTER
        gates = bh * S + t0
        scaM, decay, weight = _chunk_gates(vecB, vecI, vecSeg, gates, t0 % L_INTRA != 0, scaM, L_INTER, HAS_SEGMENTS)
        k = step_rows(matK, gates, offs_q, mask_q, DHQK, L_INTER)
        v = step_rows(matV, gates, offs_v, mask_v, DHV, L_INTER)
        weighted_v = (v * weight[:, None]).to(v.dtype)
        matC = decay * matC + tl.dot(tl.trans(k), weighted_v, input_precision=DOT_PRECISION)
        if (t0 + L_INTER) % L_INTRA == 0:
            index = bh * (NC + 1) + (t0 + L_INTER) // L_INTRA
            tl.store(matC_all + index * DHQK * DHV + offs_c, matC.to(matC_all.dtype.element_ty), mask=mask_c)
    tl.store(matC_last + bh * DHQK * DHV + offs_c, matC, mask=mask_c)


@triton.jit
def _normaliser_walk(
    matK, vecB, vecI, vecSeg, vecN_initial, scaM_initial, vecN_all, scaM_all, S: tl.constexpr, DHQK: tl.constexpr,
    NC: tl.constexpr, L_INTRA: tl.constexpr, L_INTER: tl.constexpr, BLOCK_DHQK: tl.constexpr,
    HAS_SEGMENTS: tl.constexpr,
):
    pid_q, bh = tl.program_id(0), tl.program_id(2).to(tl.int64)
    offs_q = pid_q * BLOCK_DHQK + tl.arange(0, BLOCK_DHQK)
    mask_q = offs_q < DHQK
    stores_m = pid_q == 0
    vecN = tl.load(vecN_initial + bh * DHQK + offs_q, mask=mask_q, other=0.0)
    scaM = tl.load(scaM_initial + bh)
    tl.store(vecN_all + bh * (NC + 1) * DHQK + offs_q, vecN, mask=mask_q)
    tl.store(scaM_all + bh * (NC + 1), scaM, mask=stores_m)
    for step in range(S // L_INTER):
        t0 = step * L_INTER
        gates = bh * S + t0
        scaM, decay, weight = _chunk_gates(vecB, vecI, vecSeg, gates, t0 % L_INTRA != 0, scaM, L_INTER, HAS_SEGMENTS)
        k = step_rows(matK, gates, offs_q, mask_q, DHQK, L_INTER)
        vecN = decay * vecN + tl.sum(k.to(tl.float32) * weight[:, None], axis=0)
        if (t0 + L_INTER) % L_INTRA == 0:
            index = bh * (NC + 1) + (t0 + L_INTER) // L_INTRA
            tl.store(vecN_all + index * DHQK + offs_q, vecN, mask=mask_q)
            tl.store(scaM_all + index, scaM, mask=stores_m)


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
    pid_v = tl.program_id(0)
    row0, t_chunk, t_rows, state = _row_block(tl.program_id(1), tl.program_id(2), S, NC, L, BLOCK_LQ)
    offs_d = tl.arange(0, BLOCK_DHQK)
    offs_v = pid_v * BLOCK_DHV + tl.arange(0, BLOCK_DHV)
    mask_v = offs_v < DHV
    m_chunk = tl.load(scaM_all + state)
    b_rows, seg_rows, m_rows = _row_stabiliser(vecB, vecI, vecSeg, m_chunk, t_chunk, row0, BLOCK_LQ, BLOCK_LK,
                                               HAS_SEGMENTS)

    # Inter-chunk part: s q_i C and s q_i . n, weighted by s e^(b_i + m - m_i).
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
    first_v_block = pid_v == 0  # its programs store den, m and nq
    inter_weight = _inter_weight(b_rows, seg_rows, m_rows, m_chunk, QK_SCALE, HAS_SEGMENTS)
    num *= inter_weight[:, None]
    nq *= inter_weight

    # Intra-chunk part over column blocks j <= i.
    for col0 in range(0, row0 + BLOCK_LQ, BLOCK_LK):
        t_cols = t_chunk + col0 + tl.arange(0, BLOCK_LK)
        scores = _scores(matQ, matK, t_rows, t_cols, DHQK, BLOCK_LQ, BLOCK_LK, BLOCK_DHQK, DOT_PRECISION)
        log_w, causal = _log_weights(vecB, vecI, vecSeg, b_rows, seg_rows, t_chunk, row0, col0, BLOCK_LQ, BLOCK_LK,
                                     HAS_SEGMENTS)
        weighted = scores * QK_SCALE * tl.exp(tl.where(causal, log_w - m_rows[:, None], float("-inf")))
        nq += tl.sum(weighted, axis=1)
        v = tl.load(matV + t_cols[:, None] * DHV + offs_v[None, :], mask=mask_v[None, :], other=0.0)
        num += tl.dot(weighted.to(v.dtype), v, input_precision=DOT_PRECISION)

    den = tl.maximum(tl.abs(nq), tl.exp(-m_rows))
    h = num / (den + EPS)[:, None]
    tl.store(matH + t_rows[:, None] * DHV + offs_v[None, :], h.to(matH.dtype.element_ty), mask=mask_v[None, :])
    tl.store(vecDen_out + t_rows, den.to(vecDen_out.dtype.element_ty), mask=first_v_block)
    tl.store(vecM_out + t_rows, m_rows.to(vecM_out.dtype.element_ty), mask=first_v_block)
    tl.store(vecNQ_out + t_rows, nq, mask=first_v_block)


@triton.jit
def scores_fw_kernel(
    matQ, matK, vecB, vecI, vecN_all, scaM_all,  # inputs
    matP, vecDen_out, vecM_out, vecNQ_out, vecW_out,  # outputs
    S: tl.constexpr, DHQK: tl.constexpr, NC: tl.constexpr, L: tl.constexpr, BLOCK_LQ: tl.constexpr,
    BLOCK_LK: tl.constexpr, BLOCK_DHQK: tl.constexpr, QK_SCALE: tl.constexpr, DOT_PRECISION: tl.constexpr,
    ZERO_TO: tl.constexpr,
):
    """Grid (NC * L / BLOCK_LQ, B*NH), the first half of the materialised output stage: for BLOCK_LQ rows
    i of one chunk the gated scores P_ij = s (q_i.k_j) e^(b_i-b_j+i_j-m_i) of every key block j <= i
    (zero for j > i inside a block), stored in q's dtype to ``matP (B, NH, S, L)``. Blocks wholly above the
    diagonal are written (as zeros) only up to the next multiple of ZERO_TO, the output kernel's larger block
    (those its tiles read). With BLOCK_DHQK >= DHQK, q is loaded once and each block is one dot. Also den,
    m_i, the signed nq (from fp32 P) and the inter-chunk weight s e^(b_i+m-m_i), all fp32
    (B, NH, S). m_i, nq and den as :func:`parallel_fw_kernel`."""
    _scores_fw(matQ, matK, vecB, vecI, vecI, vecN_all, scaM_all, matP, vecDen_out, vecM_out, vecNQ_out, vecW_out,
               S, DHQK, NC, L, BLOCK_LQ, BLOCK_LK, BLOCK_DHQK, QK_SCALE, DOT_PRECISION, ZERO_TO, False)


@triton.jit
def scores_fw_segments_kernel(
    matQ, matK, vecB, vecI, vecSeg, vecN_all, scaM_all,  # inputs
    matP, vecDen_out, vecM_out, vecNQ_out, vecW_out,  # outputs
    S: tl.constexpr, DHQK: tl.constexpr, NC: tl.constexpr, L: tl.constexpr, BLOCK_LQ: tl.constexpr,
    BLOCK_LK: tl.constexpr, BLOCK_DHQK: tl.constexpr, QK_SCALE: tl.constexpr, DOT_PRECISION: tl.constexpr,
    ZERO_TO: tl.constexpr,
):
    """:func:`scores_fw_kernel` with document resets: P_ij = 0 across a segment start, inter-chunk weight
    0 for rows after the chunk's first segment start (as :func:`parallel_fw_segments_kernel`)."""
    _scores_fw(matQ, matK, vecB, vecI, vecSeg, vecN_all, scaM_all, matP, vecDen_out, vecM_out, vecNQ_out, vecW_out,
               S, DHQK, NC, L, BLOCK_LQ, BLOCK_LK, BLOCK_DHQK, QK_SCALE, DOT_PRECISION, ZERO_TO, True)


@triton.jit
def _scores_fw(
    matQ, matK, vecB, vecI, vecSeg, vecN_all, scaM_all, matP, vecDen_out, vecM_out, vecNQ_out, vecW_out,
    S: tl.constexpr, DHQK: tl.constexpr, NC: tl.constexpr, L: tl.constexpr, BLOCK_LQ: tl.constexpr,
    BLOCK_LK: tl.constexpr, BLOCK_DHQK: tl.constexpr, QK_SCALE: tl.constexpr, DOT_PRECISION: tl.constexpr,
    ZERO_TO: tl.constexpr, HAS_SEGMENTS: tl.constexpr,
):
    row0, t_chunk, t_rows, state = _row_block(tl.program_id(0), tl.program_id(1), S, NC, L, BLOCK_LQ)
    offs_d = tl.arange(0, BLOCK_DHQK)
    m_chunk = tl.load(scaM_all + state)
    b_rows, seg_rows, m_rows = _row_stabiliser(vecB, vecI, vecSeg, m_chunk, t_chunk, row0, BLOCK_LQ, BLOCK_LK,
                                               HAS_SEGMENTS)
    inter_weight = _inter_weight(b_rows, seg_rows, m_rows, m_chunk, QK_SCALE, HAS_SEGMENTS)
    nq = tl.zeros([BLOCK_LQ], tl.float32)
    for d0 in range(0, DHQK, BLOCK_DHQK):
        mask_d = d0 + offs_d < DHQK
        q = tl.load(matQ + t_rows[:, None] * DHQK + d0 + offs_d[None, :], mask=mask_d[None, :], other=0.0)
        n = tl.load(vecN_all + state * DHQK + d0 + offs_d, mask=mask_d, other=0.0)
        nq += tl.sum(q.to(tl.float32) * n[None, :], axis=1)
    nq *= inter_weight

    cols = tl.arange(0, BLOCK_LK)
    mask_d = offs_d < DHQK
    if BLOCK_DHQK >= DHQK:  # all of DHQK in one block: q loaded once, one dot per key block
        q_all = tl.load(matQ + t_rows[:, None] * DHQK + offs_d[None, :], mask=mask_d[None, :], other=0.0)
    for col0 in range(0, row0 + BLOCK_LQ, BLOCK_LK):
        t_cols = t_chunk + col0 + cols
        if BLOCK_DHQK >= DHQK:
            k = tl.load(matK + t_cols[:, None] * DHQK + offs_d[None, :], mask=mask_d[None, :], other=0.0)
            scores = tl.dot(q_all, tl.trans(k), input_precision=DOT_PRECISION)
        else:
            scores = _scores(matQ, matK, t_rows, t_cols, DHQK, BLOCK_LQ, BLOCK_LK, BLOCK_DHQK, DOT_PRECISION)
        log_w, causal = _log_weights(vecB, vecI, vecSeg, b_rows, seg_rows, t_chunk, row0, col0, BLOCK_LQ, BLOCK_LK,
                                     HAS_SEGMENTS)
        weighted = scores * QK_SCALE * tl.exp(tl.where(causal, log_w - m_rows[:, None], float("-inf")))
        nq += tl.sum(weighted, axis=1)
        tl.store(matP + t_rows[:, None] * L + col0 + cols[None, :], weighted.to(matP.dtype.element_ty))
    if ZERO_TO > BLOCK_LQ:  # the output kernel's tiles reach past these rows' key blocks: zeros there
        zeros = tl.zeros([BLOCK_LQ, BLOCK_LK], matP.dtype.element_ty)
        for col0 in range(tl.cdiv(row0 + BLOCK_LQ, BLOCK_LK) * BLOCK_LK, (row0 // ZERO_TO + 1) * ZERO_TO, BLOCK_LK):
            tl.store(matP + t_rows[:, None] * L + col0 + cols[None, :], zeros)

    tl.store(vecDen_out + t_rows, tl.maximum(tl.abs(nq), tl.exp(-m_rows)))
    tl.store(vecM_out + t_rows, m_rows)
    tl.store(vecNQ_out + t_rows, nq)
    tl.store(vecW_out + t_rows, inter_weight)


@triton.jit
def output_fw_kernel(
    matQ, matV, matC_all, matP, vecW, vecDen,  # inputs
    matH,  # output
    S: tl.constexpr, DHQK: tl.constexpr, DHV: tl.constexpr, NC: tl.constexpr, L: tl.constexpr,
    BLOCK_LQ: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_DHV: tl.constexpr, EPS: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """Grid (DHV blocks, NC * L / BLOCK_LQ, B*NH), the second half of the materialised output stage:
    h_i = (w_i q_i C + sum_{j<=i} P_ij v_j) / (den_i + eps) for BLOCK_LQ rows and BLOCK_DHV columns, from
    :func:`scores_fw_kernel`'s P, inter weight w and den (documents resets are already in them). Two flat
    loops contracting BLOCK_K at a time: DHQK for q C, then the chunk's steps up to the rows' last for P V.
    Every P block it reads was written by the scores kernel (zeros above the diagonal, see ZERO_TO there)."""
    pid_v = tl.program_id(0)
    row0, t_chunk, t_rows, state = _row_block(tl.program_id(1), tl.program_id(2), S, NC, L, BLOCK_LQ)
    offs_k = tl.arange(0, BLOCK_K)
    offs_v = pid_v * BLOCK_DHV + tl.arange(0, BLOCK_DHV)
    mask_v = offs_v < DHV
    acc = tl.zeros([BLOCK_LQ, BLOCK_DHV], tl.float32)
    for d0 in range(0, DHQK, BLOCK_K):
        mask_d = d0 + offs_k < DHQK
        q = tl.load(matQ + t_rows[:, None] * DHQK + d0 + offs_k[None, :], mask=mask_d[None, :], other=0.0)
        c = tl.load(matC_all + (state * DHQK + d0 + offs_k)[:, None] * DHV + offs_v[None, :],
                    mask=mask_d[:, None] & mask_v[None, :], other=0.0)
        acc += tl.dot(q, c.to(q.dtype), input_precision=DOT_PRECISION)
    acc *= tl.load(vecW + t_rows)[:, None]
    for col0 in range(0, row0 + BLOCK_LQ, BLOCK_K):
        p = tl.load(matP + t_rows[:, None] * L + col0 + offs_k[None, :])
        v = tl.load(matV + (t_chunk + col0 + offs_k)[:, None] * DHV + offs_v[None, :], mask=mask_v[None, :], other=0.0)
        acc += tl.dot(p, v, input_precision=DOT_PRECISION)
    h = acc / (tl.load(vecDen + t_rows) + EPS)[:, None]
    tl.store(matH + t_rows[:, None] * DHV + offs_v[None, :], h.to(matH.dtype.element_ty), mask=mask_v[None, :])


@triton.jit
def _row_block(pid_l, pid_bh, S: tl.constexpr, NC: tl.constexpr, L: tl.constexpr, BLOCK_LQ: tl.constexpr):
    """Row block ``pid_l`` (of NC * L / BLOCK_LQ) of head ``pid_bh`` -> (row0: its first row within the
    chunk, t_chunk: flat (bh, t) index of the chunk's first step, t_rows: flat indices of its BLOCK_LQ
    rows, state: flat index of the chunk's entering state in the (B*NH, NC + 1) state buffers)."""
    bh = pid_bh.to(tl.int64)
    chunk = pid_l // (L // BLOCK_LQ)
    row0 = (pid_l % (L // BLOCK_LQ)) * BLOCK_LQ
    t_chunk = bh * S + chunk * L
    return row0, t_chunk, t_chunk + row0 + tl.arange(0, BLOCK_LQ), bh * (NC + 1) + chunk


@triton.jit
def _row_stabiliser(vecB, vecI, vecSeg, m_chunk, t_chunk, row0, BLOCK_LQ: tl.constexpr, BLOCK_LK: tl.constexpr,
                    HAS_SEGMENTS: tl.constexpr):
    """(b_i, segment counter_i (zeros without segments), m_i) of rows row0 + [0, BLOCK_LQ) of the chunk
    from flat step t_chunk: m_i the row max of the same masked log weights that the outputs exponentiate
    (so every exponent is <= 0 after rounding too, even for huge gates) and of b_i + m (rows after a
    segment start in the chunk begin from the zero state, m = 0)."""
    rows = tl.arange(0, BLOCK_LQ)
    b_rows = tl.load(vecB + t_chunk + row0 + rows)
    m_rows = b_rows + m_chunk
    if HAS_SEGMENTS:
        seg_rows = tl.load(vecSeg + t_chunk + row0 + rows)
        m_rows = tl.where(seg_rows == 0, m_rows, b_rows)
    else:
        seg_rows = tl.zeros([BLOCK_LQ], tl.int32)
    for col0 in range(0, row0 + BLOCK_LQ, BLOCK_LK):
        log_w, causal = _log_weights(vecB, vecI, vecSeg, b_rows, seg_rows, t_chunk, row0, col0, BLOCK_LQ, BLOCK_LK,
                                     HAS_SEGMENTS)
        m_rows = tl.maximum(m_rows, tl.max(tl.where(causal, log_w, float("-inf")), axis=1))
    return b_rows, seg_rows, m_rows


@triton.jit
def _log_weights(vecB, vecI, vecSeg, b_rows, seg_rows, t_chunk, row0, col0, BLOCK_LQ: tl.constexpr,
                 BLOCK_LK: tl.constexpr, HAS_SEGMENTS: tl.constexpr):
    """(BLOCK_LQ, BLOCK_LK) log weights b_i - b_j + i_j and the mask of the pairs that count: j <= i (and,
    with segments, j in i's segment)."""
    cols = tl.arange(0, BLOCK_LK)
    t_cols = t_chunk + col0 + cols
    log_w = b_rows[:, None] - tl.load(vecB + t_cols)[None, :] + tl.load(vecI + t_cols)[None, :]
    causal = (row0 + tl.arange(0, BLOCK_LQ))[:, None] >= (col0 + cols)[None, :]
    if HAS_SEGMENTS:
        causal = causal & (seg_rows[:, None] == tl.load(vecSeg + t_cols)[None, :])
    return log_w, causal


@triton.jit
def _inter_weight(b_rows, seg_rows, m_rows, m_chunk, QK_SCALE: tl.constexpr, HAS_SEGMENTS: tl.constexpr):
    """s e^(b_i + m - m_i), the weight of the chunk's state in row i (0 after a segment start)."""
    log_inter = b_rows + m_chunk - m_rows
    if HAS_SEGMENTS:
        log_inter = tl.where(seg_rows == 0, log_inter, float("-inf"))
    return QK_SCALE * tl.exp(log_inter)


@triton.jit
def _scores(matQ, matK, t_rows, t_cols, DHQK: tl.constexpr, BLOCK_LQ: tl.constexpr, BLOCK_LK: tl.constexpr,
            BLOCK_DHQK: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """(BLOCK_LQ, BLOCK_LK) fp32 q_i . k_j for flat steps t_rows, t_cols, DHQK contracted BLOCK_DHQK at a time."""
    offs_d = tl.arange(0, BLOCK_DHQK)
    scores = tl.zeros([BLOCK_LQ, BLOCK_LK], tl.float32)
    for d0 in range(0, DHQK, BLOCK_DHQK):
        mask_d = d0 + offs_d < DHQK
        q = tl.load(matQ + t_rows[:, None] * DHQK + d0 + offs_d[None, :], mask=mask_d[None, :], other=0.0)
        k = tl.load(matK + t_cols[:, None] * DHQK + d0 + offs_d[None, :], mask=mask_d[None, :], other=0.0)
        scores += tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
    return scores
