"""Triton kernels of the fused sLSTM recurrence with R streamed from L2 (launched by triton_launch.py;
math in docs/slstm.md; the variant with R's slice on chip: triton_resident.py).

One program per (batch block of BLOCK_B rows, head) walks the whole sequence. Per step it computes the
four gate pre-activations ``g = gate_t + bias + h_{t-1} R`` tile by tile: BLOCK_DH output columns at a time,
summing ``tl.dot`` over BLOCK_K rows of R, with the tiles of R (4 x DH x DH per head, too large for
one SM when DH = 256) streamed from L2 at every step. h in R's dtype, accumulation and gates in fp32.

Buffers (C-contiguous): the gate inputs ``gate_i, gate_f, gate_z, gate_o`` (B, S, NH, DH) each, in one
float dtype, and their ``bias`` (4, NH, DH) fp32, added in fp32; ``g``/``dg`` (B, S, 4, NH, DH) fp32;
``R`` (4, NH, DH, DH);
state histories ``c_all, n_all, m_all, h_all`` (B, S + 1, NH, DH) fp32 with slot 0 = the initial state
and slot t + 1 = the state after step t; single states (B, NH, DH) fp32. A step writes its tiles to
global memory and a ``tl.debug_barrier`` makes them visible to the whole program before the next step
reads them, so the full h_{t-1} (or dg_t) is available to every tile.

``SPLIT`` > 1 shares one (batch block, head) among SPLIT programs, each owning COLS columns of the
output (so each reads only a DH x COLS slice of R per gate, which can stay in L1). Where a program
reads the others' columns (the forward's h_{t-1}, the backward's dg_t in phase B) the programs of a
group first meet at a barrier in global memory (``sync``, one int32 counter per group, zeroed before
the launch; a release increment per arrival, a spin on volatile loads and one acquire read per wait).
All programs of a group must be resident at once, so the grid must fit on the GPU (checked by the
launcher); under the interpreter only SPLIT = 1 runs.
"""

import triton
import triton.language as tl


@triton.jit
def _sigmoid(x):
    e = tl.exp(-tl.abs(x))  # never overflows
    return tl.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@triton.jit
def _log_sigmoid(x):
    return tl.minimum(x, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(x)))


@triton.jit
def _tanh(x):
    return 2.0 * _sigmoid(2.0 * x) - 1.0


@triton.jit
def cell_step(g_i, g_f, g_z, g_o, c, n, m):
    """One step of the cell on gate pre-activations and the state before it -> (c, n, m, h) after it."""
    log_f_plus_m = _log_sigmoid(g_f) + m
    m_new = tl.maximum(log_f_plus_m, g_i)
    f_gate = tl.exp(log_f_plus_m - m_new)
    i_gate = tl.exp(g_i - m_new)
    c_new = f_gate * c + i_gate * _tanh(g_z)
    n_new = f_gate * n + i_gate
    return c_new, n_new, m_new, _sigmoid(g_o) * c_new / n_new


@triton.jit
def cell_grad(g_i, g_f, g_z, g_o, c_prev, n_prev, m_prev, dc, dn, dm, dh):
    """The backward of :func:`cell_step` (docs/slstm.md): the gates, the state before the step and the
    cotangents of the state after it (dh: the full cotangent of h) -> (the gates' cotangents d_i, d_f,
    d_z, d_o, then dc, dn, dm of the state before the step). Ties of the stabiliser's max split evenly,
    like ``jnp.maximum``."""
    log_f_plus_m = _log_sigmoid(g_f) + m_prev
    m = tl.maximum(log_f_plus_m, g_i)
    f_gate = tl.exp(log_f_plus_m - m)
    i_gate = tl.exp(g_i - m)
    z_act = _tanh(g_z)
    o_act = _sigmoid(g_o)
    c = f_gate * c_prev + i_gate * z_act
    n = f_gate * n_prev + i_gate
    # h = o_act c / n
    d_o = dh * (c / n) * o_act * (1.0 - o_act)
    dc += dh * o_act / n
    dn -= dh * o_act * c / (n * n)
    # c, n = f_gate (c_prev, n_prev) + i_gate (z_act, 1)
    d_fgate = (dc * c_prev + dn * n_prev) * f_gate  # d f_gate times f_gate: the exp's backward
    d_igate = (dc * z_act + dn) * i_gate
    d_z = dc * i_gate * (1.0 - z_act * z_act)
    # f_gate = exp(log_f_plus_m - m), i_gate = exp(i - m), m = max(log_f_plus_m, i)
    dm_total = dm - d_fgate - d_igate
    to_lf = tl.where(log_f_plus_m > g_i, 1.0, tl.where(log_f_plus_m == g_i, 0.5, 0.0))
    d_lf = d_fgate + dm_total * to_lf
    d_i = d_igate + dm_total * (1.0 - to_lf)
    # log_f_plus_m = logsig(f) + m_prev
    return d_i, d_lf * _sigmoid(-g_f), d_z, d_o, dc * f_gate, dn * f_gate, d_lf


# fmt: off
@triton.jit
def load_gates(base, offs, mask, GATE_STRIDE: tl.constexpr):
    """The four gates' tiles at ``base + offs + gate * GATE_STRIDE`` (zero where masked)."""
    return (tl.load(base + offs, mask=mask, other=0.0), tl.load(base + GATE_STRIDE + offs, mask=mask, other=0.0),
            tl.load(base + 2 * GATE_STRIDE + offs, mask=mask, other=0.0),
            tl.load(base + 3 * GATE_STRIDE + offs, mask=mask, other=0.0))


@triton.jit
def load_gate_inputs(gate_i, gate_f, gate_z, gate_o, bias, offs, bias_offs, mask, bias_mask, GATE_STRIDE: tl.constexpr):
    """The input parts of the four gates' pre-activations, fp32: the gate inputs' tiles at ``offs`` plus
    the bias at ``bias_offs`` (+ gate * GATE_STRIDE) of its (4, NH, DH) buffer (zero where masked)."""
    b_i, b_f, b_z, b_o = load_gates(bias, bias_offs, bias_mask, GATE_STRIDE)
    return (tl.load(gate_i + offs, mask=mask, other=0.0).to(tl.float32) + b_i,
            tl.load(gate_f + offs, mask=mask, other=0.0).to(tl.float32) + b_f,
            tl.load(gate_z + offs, mask=mask, other=0.0).to(tl.float32) + b_z,
            tl.load(gate_o + offs, mask=mask, other=0.0).to(tl.float32) + b_o)


@triton.jit
def store_gates(base, offs, mask, g_i, g_f, g_z, g_o, GATE_STRIDE: tl.constexpr):
    """Stores the four gates' tiles at ``base + offs + gate * GATE_STRIDE``."""
    tl.store(base + offs, g_i, mask=mask)
    tl.store(base + GATE_STRIDE + offs, g_f, mask=mask)
    tl.store(base + 2 * GATE_STRIDE + offs, g_z, mask=mask)
    tl.store(base + 3 * GATE_STRIDE + offs, g_o, mask=mask)


@triton.jit
def load_state(c_buf, n_buf, m_buf, offs, mask):
    """Tiles of three buffers of one layout at ``offs`` (zero where masked): c, n, m or their cotangents."""
    return (tl.load(c_buf + offs, mask=mask, other=0.0), tl.load(n_buf + offs, mask=mask, other=0.0),
            tl.load(m_buf + offs, mask=mask, other=0.0))


@triton.jit
def store_state(c_buf, n_buf, m_buf, offs, mask, c, n, m):
    """Stores c, n, m (or their cotangents) at ``offs`` of three buffers of one layout."""
    tl.store(c_buf + offs, c, mask=mask)
    tl.store(n_buf + offs, n, mask=mask)
    tl.store(m_buf + offs, m, mask=mask)
# fmt: on


@triton.jit
def arrive(counter):
    """Adds 1 to ``counter`` once every thread of the program is here: the program's global stores so
    far become visible to a program that then passes :func:`wait_count` on it (release increment)."""
    tl.debug_barrier()
    tl.atomic_add(counter, 1, sem="release")


@triton.jit
def wait_count(counter, target):
    """Waits until ``counter`` reaches ``target``: spins on plain (volatile, L2) loads of it, then one
    acquire read orders the program's later loads after the stores its arrivals released."""
    seen = tl.load(counter, volatile=True)
    while seen < target:
        seen = tl.load(counter, volatile=True)
    tl.atomic_add(counter, 0, sem="acquire")
    tl.debug_barrier()


@triton.jit
def group_arrive(sync, group, SPLIT: tl.constexpr):
    """This program's arrival at the group barrier (:func:`arrive`); a block-wide barrier alone when SPLIT = 1."""
    if SPLIT > 1:
        arrive(sync + group)
    else:
        tl.debug_barrier()


@triton.jit
def group_wait(sync, group, generation, SPLIT: tl.constexpr):
    """Waits until every program of ``group`` has arrived ``generation`` times (1, 2, ...)."""
    if SPLIT > 1:
        wait_count(sync + group, generation * SPLIT)


@triton.jit
def _group_barrier(sync, group, generation, SPLIT: tl.constexpr):
    """:func:`group_arrive` then :func:`group_wait`."""
    group_arrive(sync, group, SPLIT)
    group_wait(sync, group, generation, SPLIT)


# fmt: off
@triton.jit
def _copy_state(
    src, dst, offs_b, head, mask_b, col0, dst_slot,
    DST_SLOTS: tl.constexpr, NH: tl.constexpr, DH: tl.constexpr, COLS: tl.constexpr, BLOCK_DH: tl.constexpr,
):
    """dst[b, dst_slot, head, col0:col0 + COLS] = src[b, head, same columns] for the batch rows of one
    block (DST_SLOTS = 1: no slot axis)."""
    for e0 in range(col0, col0 + COLS, BLOCK_DH):
        offs_e = e0 + tl.arange(0, BLOCK_DH)
        mask = mask_b[:, None] & (offs_e < DH)[None, :]
        value = tl.load(src + (offs_b[:, None] * NH + head) * DH + offs_e[None, :], mask=mask)
        dst_offs = ((offs_b[:, None] * DST_SLOTS + dst_slot) * NH + head) * DH + offs_e[None, :]
        tl.store(dst + dst_offs, value, mask=mask)
# fmt: on


# fmt: off
@triton.jit
def slstm_fw_kernel(
    gate_i, gate_f, gate_z, gate_o, bias, R, c0, n0, m0, h0,  # inputs
    g_all, c_all, n_all, m_all, h_all, sync,  # outputs
    B: tl.constexpr, S: tl.constexpr, NH: tl.constexpr, DH: tl.constexpr, SPLIT: tl.constexpr, COLS: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_DH: tl.constexpr, BLOCK_K: tl.constexpr, DOT_PRECISION: tl.constexpr,
    STORE_G: tl.constexpr,
):
    """Grid (SPLIT, batch blocks, NH): the forward recurrence, every state and, STORE_G, every step's
    full gate pre-activations ``g_all`` ((B, S, 4, NH, DH); the backward needs them, a forward alone does
    not and then passes any buffer) stored."""
    col0, head = tl.program_id(0) * COLS, tl.program_id(2)
    group = tl.program_id(1) * NH + head
    offs_b = (tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    mask_b = offs_b < B
    _copy_state(c0, c_all, offs_b, head, mask_b, col0, 0, S + 1, NH, DH, COLS, BLOCK_DH)
    _copy_state(n0, n_all, offs_b, head, mask_b, col0, 0, S + 1, NH, DH, COLS, BLOCK_DH)
    _copy_state(m0, m_all, offs_b, head, mask_b, col0, 0, S + 1, NH, DH, COLS, BLOCK_DH)
    _copy_state(h0, h_all, offs_b, head, mask_b, col0, 0, S + 1, NH, DH, COLS, BLOCK_DH)
    _group_barrier(sync, group, 1, SPLIT)
    for t in range(S):
        prev = ((offs_b[:, None] * (S + 1) + t) * NH + head) * DH  # slot t: the state before step t
        gates = ((offs_b[:, None] * S + t) * 4 * NH + head) * DH
        seq = ((offs_b[:, None] * S + t) * NH + head) * DH  # the gate inputs of step t
        for e0 in range(col0, col0 + COLS, BLOCK_DH):
            offs_e = e0 + tl.arange(0, BLOCK_DH)
            mask_e = offs_e < DH
            mask = mask_b[:, None] & mask_e[None, :]
            g_i, g_f, g_z, g_o = load_gate_inputs(
                gate_i, gate_f, gate_z, gate_o, bias, seq + offs_e[None, :], head * DH + offs_e[None, :], mask,
                mask_e[None, :], NH * DH)
            for k0 in range(0, DH, BLOCK_K):
                offs_k = k0 + tl.arange(0, BLOCK_K)
                mask_k = offs_k < DH
                h = tl.load(h_all + prev + offs_k[None, :], mask=mask_b[:, None] & mask_k[None, :], other=0.0)
                h = h.to(R.dtype.element_ty)
                r_offs = (head * DH + offs_k[:, None]) * DH + offs_e[None, :]
                r_mask = mask_k[:, None] & mask_e[None, :]
                g_i += tl.dot(h, tl.load(R + r_offs, mask=r_mask, other=0.0), input_precision=DOT_PRECISION)
                g_f += tl.dot(
                    h, tl.load(R + NH * DH * DH + r_offs, mask=r_mask, other=0.0), input_precision=DOT_PRECISION
                )
                g_z += tl.dot(
                    h, tl.load(R + 2 * NH * DH * DH + r_offs, mask=r_mask, other=0.0), input_precision=DOT_PRECISION
                )
                g_o += tl.dot(
                    h, tl.load(R + 3 * NH * DH * DH + r_offs, mask=r_mask, other=0.0), input_precision=DOT_PRECISION
                )
            if STORE_G:
                store_gates(g_all, gates + offs_e[None, :], mask, g_i, g_f, g_z, g_o, NH * DH)
            c, n, m = load_state(c_all, n_all, m_all, prev + offs_e[None, :], mask)
            c, n, m, h_new = cell_step(g_i, g_f, g_z, g_o, c, n, m)
            nxt = prev + NH * DH + offs_e[None, :]  # slot t + 1
            store_state(c_all, n_all, m_all, nxt, mask, c, n, m)
            tl.store(h_all + nxt, h_new, mask=mask)
        _group_barrier(sync, group, t + 2, SPLIT)
# fmt: on


# fmt: off
@triton.jit
def slstm_bw_kernel(
    g, R, c_all, n_all, m_all, dh_seq, dc_last, dn_last, dm_last, dh_last,  # inputs
    dg, dc0, dn0, dm0, dh0, d_bias, sync,  # outputs
    B: tl.constexpr, S: tl.constexpr, NH: tl.constexpr, DH: tl.constexpr, SPLIT: tl.constexpr, COLS: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_DH: tl.constexpr, BLOCK_K: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Grid (SPLIT, batch blocks, NH): reverse-time walk from the cotangents of the last state and of every h
    (``dh_seq`` (B, S, NH, DH)), recomputing each step's c, n, m from the stored state before it and the
    full gate pre-activations ``g``. Writes ``dg`` (the gradient of every gate pre-activation) and its
    sum over the steps per batch row, ``d_bias`` (B, 4, NH, DH) (the launcher sums the rows), and uses
    dc0, dn0, dm0, dh0 as the running cotangents of the state, which end as the initial state's.
    The max of the stabiliser splits its cotangent evenly on ties, like ``jnp.maximum``."""
    col0, head = tl.program_id(0) * COLS, tl.program_id(2)
    group = tl.program_id(1) * NH + head
    offs_b = (tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    mask_b = offs_b < B
    _copy_state(dc_last, dc0, offs_b, head, mask_b, col0, 0, 1, NH, DH, COLS, BLOCK_DH)
    _copy_state(dn_last, dn0, offs_b, head, mask_b, col0, 0, 1, NH, DH, COLS, BLOCK_DH)
    _copy_state(dm_last, dm0, offs_b, head, mask_b, col0, 0, 1, NH, DH, COLS, BLOCK_DH)
    _copy_state(dh_last, dh0, offs_b, head, mask_b, col0, 0, 1, NH, DH, COLS, BLOCK_DH)
    tl.debug_barrier()  # each program reads back only its own columns until its first group barrier
    running = (offs_b[:, None] * NH + head) * DH
    for step in range(S):
        t = S - 1 - step
        prev = ((offs_b[:, None] * (S + 1) + t) * NH + head) * DH
        gates = ((offs_b[:, None] * S + t) * 4 * NH + head) * DH
        for e0 in range(col0, col0 + COLS, BLOCK_DH):
            offs_e = e0 + tl.arange(0, BLOCK_DH)
            mask = mask_b[:, None] & (offs_e < DH)[None, :]
            g_i, g_f, g_z, g_o = load_gates(g, gates + offs_e[None, :], mask, NH * DH)
            c_prev, n_prev, m_prev = load_state(c_all, n_all, m_all, prev + offs_e[None, :], mask)
            dc, dn, dm = load_state(dc0, dn0, dm0, running + offs_e[None, :], mask)
            dh = tl.load(dh0 + running + offs_e[None, :], mask=mask, other=0.0)
            dh += tl.load(dh_seq + ((offs_b[:, None] * S + t) * NH + head) * DH + offs_e[None, :], mask=mask, other=0.0)
            d_i, d_f, d_z, d_o, dc, dn, dm = cell_grad(g_i, g_f, g_z, g_o, c_prev, n_prev, m_prev, dc, dn, dm, dh)
            store_gates(dg, gates + offs_e[None, :], mask, d_i, d_f, d_z, d_o, NH * DH)
            sums = ((offs_b[:, None] * 4 * NH + head) * DH) + offs_e[None, :]  # running sums, from 0 at step 0
            b_i, b_f, b_z, b_o = load_gates(d_bias, sums, mask & (step > 0), NH * DH)
            store_gates(d_bias, sums, mask, b_i + d_i, b_f + d_f, b_z + d_z, b_o + d_o, NH * DH)
            store_state(dc0, dn0, dm0, running + offs_e[None, :], mask, dc, dn, dm)
        _group_barrier(sync, group, step + 1, SPLIT)  # phase B reads every program's dg_t
        # the cotangent of h_{t-1} (this program's columns): sum over gates of dg_t R^T
        for k0 in range(col0, col0 + COLS, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            mask_k = offs_k < DH
            acc = tl.zeros((BLOCK_B, BLOCK_K), tl.float32)
            for e0 in range(0, DH, BLOCK_DH):
                offs_e = e0 + tl.arange(0, BLOCK_DH)
                mask_e = offs_e < DH
                dg_offs = gates + offs_e[None, :]
                dg_mask = mask_b[:, None] & mask_e[None, :]
                rt_offs = (head * DH + offs_k[None, :]) * DH + offs_e[:, None]  # R^T tile (BLOCK_DH, BLOCK_K)
                rt_mask = mask_e[:, None] & mask_k[None, :]
                for j in tl.static_range(4):
                    d = tl.load(dg + dg_offs + j * NH * DH, mask=dg_mask, other=0.0).to(R.dtype.element_ty)
                    rt = tl.load(R + j * NH * DH * DH + rt_offs, mask=rt_mask, other=0.0)
                    acc += tl.dot(d, rt, input_precision=DOT_PRECISION)
            tl.store(dh0 + running + offs_k[None, :], acc, mask=mask_b[:, None] & mask_k[None, :])
        tl.debug_barrier()  # the next phase A reads only this program's columns of dh0
# fmt: on
