"""The recurrent kernel's gradient ``dR[gate, head] = sum over (b, t) of h_{t-1}^T dg_t[gate]`` and the
gate inputs' cotangents (dg in their dtype), in Triton: as a kernel of its own after the backward walk
(:func:`slstm_dr_kernel`), or as extra programs of the resident backward walk's launch that follow the
walk through time (:func:`dr_follower`, triton_resident.slstm_bw_fused_kernel).

Buffers as in triton_kernels.py: h_all (B, S + 1, NH, DH) fp32 (slot t holds h_{t-1}), dg (B, S, 4,
NH, DH) fp32, R (4, NH, DH, DH) for its dtype. h is rounded to R's dtype, as in the forward's product;
fp32 accumulation. bf16 R: h is exact in bf16 and dg is split into bf16 high and low parts (two bf16
dots; about 2^-17 of each dg is lost); other dtypes: fp32 operands, three TF32 products (about fp32
accuracy). Each program owns one (BLOCK_D, BLOCK_E) tile of one gate's and head's dR and takes BLOCK_N
steps of one sequence per ``tl.dot``.
"""

import triton
import triton.language as tl

from .triton_kernels import wait_count


# fmt: off
@triton.jit
def _tile(tile, gate, d_i, d_f, d_z, d_o, DH: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_E: tl.constexpr):
    """Row and column offsets of tile ``tile`` (row tiles x column tiles) of dR, the index of its row
    tile, and the gate's cotangent buffer (one of ``d_i, d_f, d_z, d_o``)."""
    tiles_e: tl.constexpr = (DH + BLOCK_E - 1) // BLOCK_E
    tile_d = tile // tiles_e
    offs_d = tile_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_e = (tile % tiles_e) * BLOCK_E + tl.arange(0, BLOCK_E)
    d_gate = d_i
    if gate == 1:
        d_gate = d_f
    elif gate == 2:
        d_gate = d_z
    elif gate == 3:
        d_gate = d_o
    return offs_d, offs_e, tile_d, d_gate


@triton.jit
def _dr_block(
    h_all, dg, R, d_gate, acc, b, start, gate, head, offs_d, offs_e,
    S: tl.constexpr, NH: tl.constexpr, DH: tl.constexpr, BLOCK_N: tl.constexpr, PASS_DG: tl.constexpr,
):
    """``acc`` (BLOCK_D, BLOCK_E) plus h_{t-1}^T dg_t over the BLOCK_N steps from ``start`` of sequence
    ``b``; with PASS_DG it also stores their dg tile in ``d_gate``'s dtype."""
    b = tl.cast(b, tl.int64)
    steps = start + tl.arange(0, BLOCK_N)
    mask_t = steps < S
    mask_d, mask_e = offs_d < DH, offs_e < DH
    h_offs = ((b * (S + 1) + steps[None, :]) * NH + head) * DH + offs_d[:, None]  # slot t: h_{t-1}
    h_t = tl.load(h_all + h_offs, mask=mask_d[:, None] & mask_t[None, :], other=0.0).to(R.dtype.element_ty)
    d_offs = (((b * S + steps[:, None]) * 4 + gate) * NH + head) * DH + offs_e[None, :]
    d = tl.load(dg + d_offs, mask=mask_t[:, None] & mask_e[None, :], other=0.0)  # (BLOCK_N, BLOCK_E)
    if PASS_DG:
        out_offs = ((b * S + steps[:, None]) * NH + head) * DH + offs_e[None, :]
        tl.store(d_gate + out_offs, d.to(d_gate.dtype.element_ty), mask=mask_t[:, None] & mask_e[None, :])
    if R.dtype.element_ty == tl.bfloat16:
        d_high = d.to(tl.bfloat16)
        acc = tl.dot(h_t, d_high, acc)
        acc = tl.dot(h_t, (d - d_high.to(tl.float32)).to(tl.bfloat16), acc)
    else:
        acc = tl.dot(h_t.to(tl.float32), d, acc, input_precision="tf32x3")
    return acc


@triton.jit
def _dr_rows(
    h_all, dg, R, d_gate, acc, first, last, gate, head, offs_d, offs_e,
    S: tl.constexpr, NH: tl.constexpr, DH: tl.constexpr, BLOCK_N: tl.constexpr, PASS_DG: tl.constexpr,
):
    """:func:`_dr_block` over the blocks ``first`` .. ``last`` of BLOCK_N steps (block k: sequence k //
    blocks per sequence). A loop of its own for each PASS_DG: a branch inside one loop made the kernel
    2.3x slower (H100, 350m sLSTM shape: 1.37 against 0.61 ms, with a sum of dg over the rows that the
    backward walk now does)."""
    blocks_per_row: tl.constexpr = (S + BLOCK_N - 1) // BLOCK_N
    for block in range(first, last):
        acc = _dr_block(h_all, dg, R, d_gate, acc, block // blocks_per_row, (block % blocks_per_row) * BLOCK_N,
                        gate, head, offs_d, offs_e, S, NH, DH, BLOCK_N, PASS_DG)
    return acc


@triton.jit
def slstm_dr_kernel(
    h_all, dg, R,  # inputs h_all (B, S + 1, NH, DH), dg (B, S, 4, NH, DH) fp32, R (for its dtype)
    dR_parts, d_i, d_f, d_z, d_o,  # outputs (SPLIT_ROWS, 4, NH, DH, DH) fp32, 4 x (B, S, NH, DH)
    B: tl.constexpr, S: tl.constexpr, NH: tl.constexpr, DH: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_E: tl.constexpr, SPLIT_ROWS: tl.constexpr,
):
    """Grid (row tiles x column tiles of R, SPLIT_ROWS, 4 * NH): one part of dR, the sum over the
    program's share (1 / SPLIT_ROWS) of the (b, t) rows into ``dR_parts[part, gate, head]`` (the launcher
    adds the parts). The programs also pass the dg tiles they read on to ``d_i, d_f, d_z, d_o`` (the gate
    inputs' cotangents, in their dtype), each row tile a share of the rows."""
    gate, head = tl.program_id(2) // NH, tl.program_id(2) % NH
    offs_d, offs_e, tile_d, d_gate = _tile(tl.program_id(0), gate, d_i, d_f, d_z, d_o, DH, BLOCK_D, BLOCK_E)
    blocks: tl.constexpr = B * ((S + BLOCK_N - 1) // BLOCK_N)
    first = tl.program_id(1) * blocks // SPLIT_ROWS
    last = (tl.program_id(1) + 1) * blocks // SPLIT_ROWS
    part = tl.cast(tl.program_id(1), tl.int64)
    r_offs = (((part * 4 + gate) * NH + head) * DH + offs_d[:, None]) * DH + offs_e[None, :]
    # the programs of a column tile share passing dg on: row tile k its k-th share of the blocks
    tiles_d: tl.constexpr = (DH + BLOCK_D - 1) // BLOCK_D
    pass_first = first + tile_d * (last - first) // tiles_d
    pass_last = first + (tile_d + 1) * (last - first) // tiles_d
    acc = tl.zeros((BLOCK_D, BLOCK_E), tl.float32)
    acc = _dr_rows(h_all, dg, R, d_gate, acc, first, pass_first, gate, head, offs_d, offs_e, S, NH, DH, BLOCK_N, False)
    acc = _dr_rows(h_all, dg, R, d_gate, acc, pass_first, pass_last, gate, head, offs_d, offs_e, S, NH, DH, BLOCK_N,
                   True)
    acc = _dr_rows(h_all, dg, R, d_gate, acc, pass_last, last, gate, head, offs_d, offs_e, S, NH, DH, BLOCK_N, False)
    tl.store(dR_parts + r_offs, acc, mask=(offs_d < DH)[:, None] & (offs_e < DH)[None, :])


@triton.jit
def dr_follower(
    h_all, dg, R, dR_parts, d_i, d_f, d_z, d_o, progress, follower, batch_block, head,
    B: tl.constexpr, S: tl.constexpr, NH: tl.constexpr, DH: tl.constexpr, SPLIT: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_E: tl.constexpr,
):
    """Program ``follower`` (of 4 gates x tiles of dR) of the (``batch_block``, ``head``) group of a
    backward walk: its tile's sum over the group's BLOCK_B sequences, into ``dR_parts[batch_block, gate,
    head]``, BLOCK_N steps at a time in the walk's (reverse) order, each block once the group's SPLIT walk
    programs have all counted it done in ``progress`` (one int32 per group; each walk program adds 1 after
    its dg store at a step t with t % BLOCK_N == 0: blocks are aligned to t = 0, the last one, walked first,
    may be short). It passes dg on like :func:`slstm_dr_kernel`, row tile k the blocks k, k + row tiles,
    ... (a loop per case, as in :func:`_dr_rows`, keeps PASS_DG a constant inside each)."""
    tiles_d: tl.constexpr = (DH + BLOCK_D - 1) // BLOCK_D
    tiles: tl.constexpr = tiles_d * ((DH + BLOCK_E - 1) // BLOCK_E)
    gate, tile = follower // tiles, follower % tiles
    offs_d, offs_e, tile_d, d_gate = _tile(tile, gate, d_i, d_f, d_z, d_o, DH, BLOCK_D, BLOCK_E)
    blocks: tl.constexpr = (S + BLOCK_N - 1) // BLOCK_N
    first = batch_block * BLOCK_B
    last = tl.minimum(first + BLOCK_B, B)
    counter = progress + batch_block * NH + head
    acc = tl.zeros((BLOCK_D, BLOCK_E), tl.float32)
    for k in range(blocks):
        start = (blocks - 1 - k) * BLOCK_N
        wait_count(counter, (k + 1) * SPLIT)
        if k % tiles_d == tile_d:
            for b in range(first, last):
                acc = _dr_block(h_all, dg, R, d_gate, acc, b, start, gate, head, offs_d, offs_e, S, NH, DH, BLOCK_N,
                                True)
        else:
            for b in range(first, last):
                acc = _dr_block(h_all, dg, R, d_gate, acc, b, start, gate, head, offs_d, offs_e, S, NH, DH, BLOCK_N,
                                False)
    r_offs = (((tl.cast(batch_block, tl.int64) * 4 + gate) * NH + head) * DH + offs_d[:, None]) * DH + offs_e[None, :]
    tl.store(dR_parts + r_offs, acc, mask=(offs_d < DH)[:, None] & (offs_e < DH)[None, :])
# fmt: on
