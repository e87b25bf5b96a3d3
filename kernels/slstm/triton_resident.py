"""The fused sLSTM recurrence with each program's slice of R loaded once and kept on chip (launched by
triton_launch.py with ``resident``; the streaming kernels and the buffer layouts: triton_kernels.py).

Grid (SPLIT, batch blocks, NH) as there, but each program owns exactly one tile of COLS (a power of
two) output columns and reads its slice of R once, before the time loop: the forward's
``R[gate, head, :, cols]`` and the backward's ``R[gate, head, cols, :]^T``, four (DH_PAD, COLS) tensors
(64 KiB bf16 at DH = 256, COLS = 32). A step is then one ``tl.dot`` per gate over the whole padded head
dim, K = DH_PAD. The program's own columns of the running state (c, n, m; the backward's dc, dn, dm
and dh) stay in registers too; the histories are still stored every step (the backward and the dR
kernel read them). Only h_{t-1} (forward) and dg_t (backward) cross programs: each program stores
its columns, arrives at the group barrier, then stores the rest of the step and loads the next step's
inputs while the others arrive, and waits before reading them.
"""

import triton
import triton.language as tl

from .triton_kernels import (
    cell_grad,
    cell_step,
    group_arrive,
    group_wait,
    load_gates,
    load_state,
    store_gates,
    store_state,
)


# fmt: off
@triton.jit
def _product(x, r_i, r_f, r_z, r_o, acc_i, acc_f, acc_z, acc_o, DOT_PRECISION: tl.constexpr):
    """(acc_gate + x @ r_gate for each gate): x (BLOCK_B, DH_PAD) in R's dtype, r (DH_PAD, COLS)."""
    return (tl.dot(x, r_i, acc_i, input_precision=DOT_PRECISION), tl.dot(x, r_f, acc_f, input_precision=DOT_PRECISION),
            tl.dot(x, r_z, acc_z, input_precision=DOT_PRECISION), tl.dot(x, r_o, acc_o, input_precision=DOT_PRECISION))


@triton.jit
def _program_slice(
    R, head, B: tl.constexpr, NH: tl.constexpr, DH: tl.constexpr, COLS: tl.constexpr, BLOCK_B: tl.constexpr,
    DH_PAD: tl.constexpr, TRANSPOSED: tl.constexpr,
):
    """This program's batch rows ``offs_b``, its columns ``offs_e``, every column ``offs_k``, the masks
    (BLOCK_B, COLS) and (BLOCK_B, DH_PAD), the offsets (BLOCK_B, COLS) of its state in (B, NH, DH)
    buffers and the four gates' (DH_PAD, COLS) slices: R[gate, head, :, cols], or TRANSPOSED
    R[gate, head, cols, :]^T."""
    offs_b = (tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    offs_e = tl.program_id(0) * COLS + tl.arange(0, COLS)
    offs_k = tl.arange(0, DH_PAD)
    if TRANSPOSED:
        r_offs = (head * DH + offs_e[None, :]) * DH + offs_k[:, None]
    else:
        r_offs = (head * DH + offs_k[:, None]) * DH + offs_e[None, :]
    r_i, r_f, r_z, r_o = load_gates(R, r_offs, (offs_k < DH)[:, None] & (offs_e < DH)[None, :], NH * DH * DH)
    return (offs_b, offs_e, offs_k, (offs_b < B)[:, None] & (offs_e < DH)[None, :],
            (offs_b < B)[:, None] & (offs_k < DH)[None, :], (offs_b[:, None] * NH + head) * DH + offs_e[None, :],
            r_i, r_f, r_z, r_o)


@triton.jit
def slstm_fw_resident_kernel(
    pre, R, c0, n0, m0, h0,  # inputs
    g_all, c_all, n_all, m_all, h_all, sync,  # outputs
    B: tl.constexpr, S: tl.constexpr, NH: tl.constexpr, DH: tl.constexpr, SPLIT: tl.constexpr, COLS: tl.constexpr,
    BLOCK_B: tl.constexpr, DH_PAD: tl.constexpr, DOT_PRECISION: tl.constexpr, STORE_G: tl.constexpr,
):
    """The forward of triton_kernels.slstm_fw_kernel (same buffers, outputs and STORE_G) with R's slice
    resident."""
    head = tl.program_id(2)
    group = tl.program_id(1) * NH + head
    offs_b, offs_e, offs_k, mask, mask_h, state, r_i, r_f, r_z, r_o = _program_slice(
        R, head, B, NH, DH, COLS, BLOCK_B, DH_PAD, False)
    c, n, m = load_state(c0, n0, m0, state, mask)
    slot0 = (offs_b[:, None] * (S + 1) * NH + head) * DH + offs_e[None, :]
    tl.store(h_all + slot0, tl.load(h0 + state, mask=mask, other=0.0), mask=mask)
    group_arrive(sync, group, SPLIT)
    store_state(c_all, n_all, m_all, slot0, mask, c, n, m)
    gates = (offs_b[:, None] * S * 4 * NH + head) * DH + offs_e[None, :]  # step 0
    p_i, p_f, p_z, p_o = load_gates(pre, gates, mask, NH * DH)
    group_wait(sync, group, 1, SPLIT)
    for t in range(S):
        prev = ((offs_b[:, None] * (S + 1) + t) * NH + head) * DH  # slot t: the state before step t
        h = tl.load(h_all + prev + offs_k[None, :], mask=mask_h, other=0.0).to(R.dtype.element_ty)
        g_i, g_f, g_z, g_o = _product(h, r_i, r_f, r_z, r_o, p_i, p_f, p_z, p_o, DOT_PRECISION)
        c, n, m, h_new = cell_step(g_i, g_f, g_z, g_o, c, n, m)
        nxt = prev + NH * DH + offs_e[None, :]  # slot t + 1
        tl.store(h_all + nxt, h_new, mask=mask)
        group_arrive(sync, group, SPLIT)
        if STORE_G:
            store_gates(g_all, gates, mask, g_i, g_f, g_z, g_o, NH * DH)
        store_state(c_all, n_all, m_all, nxt, mask, c, n, m)
        gates += 4 * NH * DH  # step t + 1 (loaded only if it exists)
        p_i, p_f, p_z, p_o = load_gates(pre, gates, mask & (t + 1 < S), NH * DH)
        group_wait(sync, group, t + 2, SPLIT)


@triton.jit
def slstm_bw_resident_kernel(
    g, R, c_all, n_all, m_all, dh_seq, dc_last, dn_last, dm_last, dh_last,  # inputs
    dg, dc0, dn0, dm0, dh0, sync,  # outputs
    B: tl.constexpr, S: tl.constexpr, NH: tl.constexpr, DH: tl.constexpr, SPLIT: tl.constexpr, COLS: tl.constexpr,
    BLOCK_B: tl.constexpr, DH_PAD: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """The backward of triton_kernels.slstm_bw_kernel (same buffers and outputs; dc0, dn0, dm0, dh0 are
    written once, after the walk) with R^T's slice resident."""
    head = tl.program_id(2)
    group = tl.program_id(1) * NH + head
    offs_b, offs_e, offs_k, mask, mask_dg, state, rt_i, rt_f, rt_z, rt_o = _program_slice(
        R, head, B, NH, DH, COLS, BLOCK_B, DH_PAD, True)
    dc, dn, dm = load_state(dc_last, dn_last, dm_last, state, mask)
    dh = tl.load(dh_last + state, mask=mask, other=0.0)
    # the inputs of step t = S - 1: its gates, the state before it (slot t) and the cotangent of its h
    gates = ((offs_b[:, None] * S + S - 1) * 4 * NH + head) * DH + offs_e[None, :]
    prev = ((offs_b[:, None] * (S + 1) + S - 1) * NH + head) * DH + offs_e[None, :]
    seq = ((offs_b[:, None] * S + S - 1) * NH + head) * DH + offs_e[None, :]
    g_i, g_f, g_z, g_o = load_gates(g, gates, mask, NH * DH)
    c_prev, n_prev, m_prev = load_state(c_all, n_all, m_all, prev, mask)
    dh_t = tl.load(dh_seq + seq, mask=mask, other=0.0)
    for step in range(S):
        d_i, d_f, d_z, d_o, dc, dn, dm = cell_grad(g_i, g_f, g_z, g_o, c_prev, n_prev, m_prev, dc, dn, dm, dh + dh_t)
        store_gates(dg, gates, mask, d_i, d_f, d_z, d_o, NH * DH)
        group_arrive(sync, group, SPLIT)
        dg_t = ((offs_b[:, None] * S + S - 1 - step) * 4 * NH + head) * DH + offs_k[None, :]
        more = mask & (step + 1 < S)  # the next step, t - 1, exists
        gates -= 4 * NH * DH
        prev -= NH * DH
        seq -= NH * DH
        g_i, g_f, g_z, g_o = load_gates(g, gates, more, NH * DH)
        c_prev, n_prev, m_prev = load_state(c_all, n_all, m_all, prev, more)
        dh_t = tl.load(dh_seq + seq, mask=more, other=0.0)
        group_wait(sync, group, step + 1, SPLIT)
        # the cotangent of h_{t-1} (this program's columns): sum over gates of dg_t R^T
        dt = R.dtype.element_ty
        dg_i, dg_f, dg_z, dg_o = load_gates(dg, dg_t, mask_dg, NH * DH)
        dh = tl.dot(dg_i.to(dt), rt_i, tl.zeros((BLOCK_B, COLS), tl.float32), input_precision=DOT_PRECISION)
        dh = tl.dot(dg_f.to(dt), rt_f, dh, input_precision=DOT_PRECISION)
        dh = tl.dot(dg_z.to(dt), rt_z, dh, input_precision=DOT_PRECISION)
        dh = tl.dot(dg_o.to(dt), rt_o, dh, input_precision=DOT_PRECISION)
    store_state(dc0, dn0, dm0, state, mask, dc, dn, dm)
    tl.store(dh0 + state, dh, mask=mask)
# fmt: on
