"""The fused sLSTM recurrence with each program's slice of R loaded once and kept on chip (launched by
triton_launch.py with ``resident``; the streaming kernels and the buffer layouts: triton_kernels.py).

Grid (SPLIT, batch blocks, NH) as there, but each program owns exactly one tile of COLS (a power of
two) columns and reads its slice ``R[gate, head, :, cols]`` once, before the time loop: four
(DH_PAD, COLS) tensors (64 KiB bf16 at DH = 256, COLS = 32). A forward step is then one ``tl.dot`` per
gate over the whole padded head dim, h_{t-1} (BLOCK_B, DH_PAD) times the slice; a backward step
multiplies the program's own columns of dg_t (four (BLOCK_B, COLS) tiles) by the slice transposed, a
partial of the cotangent of h_{t-1} over every column. The program's own columns of the running state
(c, n, m; the backward's dc, dn, dm and dh) stay in registers too; the histories are still stored every
step (the backward and the dR kernel read them). Only h_{t-1} (forward) and the partials (backward)
cross programs, not through the streaming kernels' group barrier but through an exchange ``ring``
(zeroed before the launch): two slots of words, each a value with its step's tag (:func:`_post`): the
forward's h in R's dtype (the product's operand), the backward's fp32 partials; int32 words for 16-bit
R (the partials rounded to 15 mantissa bits), int64 for fp32. A reader re-reads its tile from L2 until
every word carries the tag it waits for (:func:`_collect`): the data is its own arrival flag, with no
fence, counter or acquire read on the way. A slot is rewritten two steps later, only after every
program that reads it has (each must first post its next values, which need the rewriting program's;
a backward program with only padding columns is read by none). Each program posts first, then stores
the rest of the step (and the backward loads the next step's inputs) while the others post, and
collects last; the forward loads a step's gate inputs one step ahead.
"""

import triton
import triton.language as tl

from .triton_dr import dr_follower
from .triton_kernels import (
    arrive,
    cell_grad,
    cell_step,
    load_gates,
    load_state,
    store_gates,
    store_state,
)


@triton.jit
def _post(ring, offs, mask, value, tag):
    """Stores ``value`` with ``tag`` in one word per element of ``ring`` at ``offs``, in one of three
    formats (by the sizes of the word and the value): a 16-bit value in the low half of an int32 word,
    the tag mod 2^16 in the high half; an fp32 value rounded to its top 24 bits (15 mantissa bits; NaN
    stays NaN) in an int32 word, the tag mod 2^8 in the low 8 bits; an fp32 value in the low half of an
    int64 word, the tag in the high half."""
    word_bits: tl.constexpr = ring.dtype.element_ty.primitive_bitwidth
    if word_bits == 32:
        if value.dtype.primitive_bitwidth == 16:
            bits = value.to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
        else:  # nearest, ties away from zero (a carry into the exponent is right); NaN kept a quiet NaN,
            # since the rounding would wrap NVIDIA's NaN 0x7FFFFFFF to -0
            rounded = (value.to(tl.int32, bitcast=True) + 0x80) & -256
            bits = tl.where(value != value, 0x7FC00000, rounded)
        tl.store(ring + offs, _tag_bits(tag, value.dtype.primitive_bitwidth) | bits, mask=mask)
    else:
        tl.static_assert(value.dtype.primitive_bitwidth == 32)
        bits = value.to(tl.int32, bitcast=True).to(tl.int64) & 0xFFFFFFFF
        tl.store(ring + offs, (tl.cast(tag, tl.int64) << 32) | bits, mask=mask)


@triton.jit
def _tag_bits(tag, VALUE_BITS: tl.constexpr):
    """``tag`` in the tag field of an int32 word of :func:`_post` (value bits 0): mod 2^16 in the high
    half next to a 16-bit value, mod 2^8 in the low 8 bits under an fp32 value."""
    if VALUE_BITS == 16:
        return tag << 16
    else:
        return tag & 0xFF


@triton.jit
def _tag_mismatch(word, tag, VALUE_BITS: tl.constexpr):
    """Per int32 word of :func:`_post`, its tag field xor that of ``tag`` (and its value bits):
    nothing in the tag field (:func:`_tag_field`) where the word carries ``tag``. A word holds either
    that tag or the previous one of its slot (two steps back), or 0 before the slot's first post, so 8
    bits tell them apart. Or-ed over a tile, it tests every word at once."""
    return word ^ _tag_bits(tag, VALUE_BITS)


@triton.jit
def _tag_field(VALUE_BITS: tl.constexpr):
    """The tag field's bits of an int32 word of :func:`_post`."""
    return -65536 if VALUE_BITS == 16 else 0xFF


@triton.jit
def _collect(ring, offs, mask, tag, dtype: tl.constexpr):
    """The ``dtype`` values that :func:`_post` stored at ``offs`` of ``ring``, once every word there
    carries ``tag`` (masked: zeros). Re-reads (volatile, from L2) until the slowest program's words
    have arrived."""
    if ring.dtype.element_ty.primitive_bitwidth == 32:
        value_bits: tl.constexpr = dtype.primitive_bitwidth
        ready = _tag_bits(tag, value_bits)
        word = tl.load(ring + offs, mask=mask, other=ready, volatile=True)
        # one or over the tile: about 30 instructions per check instead of about 170 for a min of
        # per-word flags (sm_90); H200 forward 6.48 against 6.70 ms
        while (tl.reduce_or(_tag_mismatch(word, tag, value_bits), axis=None) & _tag_field(value_bits)) != 0:
            word = tl.load(ring + offs, mask=mask, other=ready, volatile=True)
        if value_bits == 16:
            values = (word & 0xFFFF).to(tl.int16).to(dtype, bitcast=True)
        else:
            values = (word & -256).to(tl.float32, bitcast=True)
    else:  # int64 words carry the whole tag: arrived once it is no longer below ``tag``
        ready = tl.cast(tag, tl.int64) << 32
        word = tl.load(ring + offs, mask=mask, other=ready, volatile=True)
        while tl.min((word >> 32).to(tl.int32)) < tag:
            word = tl.load(ring + offs, mask=mask, other=ready, volatile=True)
        values = word.to(tl.int32).to(tl.float32, bitcast=True)
    return values


# fmt: off
@triton.jit
def _product(x, r_i, r_f, r_z, r_o, acc_i, acc_f, acc_z, acc_o, DOT_PRECISION: tl.constexpr):
    """(acc_gate + x @ r_gate for each gate): x (BLOCK_B, DH_PAD) in R's dtype, r (DH_PAD, COLS)."""
    return (tl.dot(x, r_i, acc_i, input_precision=DOT_PRECISION), tl.dot(x, r_f, acc_f, input_precision=DOT_PRECISION),
            tl.dot(x, r_z, acc_z, input_precision=DOT_PRECISION), tl.dot(x, r_o, acc_o, input_precision=DOT_PRECISION))


@triton.jit
def _joined_slice(R, r_offs, r_mask, NH: tl.constexpr, DH: tl.constexpr):
    """The four gates' slices at ``r_offs`` (:func:`_program_slice`) side by side, (DH_PAD, 4 COLS): column
    4 e + 2 p + q holds gate 2 q + p of column e (:func:`_four_ptrs`'s order), so that the product's
    (BLOCK_B, 4 COLS) reshapes to a (BLOCK_B, COLS, 2, 2) tile that :func:`_split4` splits into the four
    gates."""
    gate = NH * DH * DH
    joined = tl.load(_four_ptrs(R, R + gate, R + 2 * gate, R + 3 * gate, r_offs), mask=r_mask[:, :, None, None],
                     other=0.0)
    return tl.reshape(joined, (r_offs.shape[0], 4 * r_offs.shape[1]))


@triton.jit
def _program_slice(
    part, batch_block, head, B: tl.constexpr, NH: tl.constexpr, DH: tl.constexpr, COLS: tl.constexpr,
    BLOCK_B: tl.constexpr, DH_PAD: tl.constexpr,
):
    """Walk program ``part`` of the (``batch_block``, ``head``) group: its batch rows ``offs_b``, its columns
    ``offs_e``, every column ``offs_k``, the masks (BLOCK_B, COLS) and (BLOCK_B, DH_PAD), the offsets
    (BLOCK_B, COLS) of its state in (B, NH, DH) buffers, and the offsets and mask (DH_PAD, COLS) of its
    slice R[gate, head, :, cols] in gate 0 of R."""
    offs_b = (batch_block * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    offs_e = part * COLS + tl.arange(0, COLS)
    offs_k = tl.arange(0, DH_PAD)
    return (offs_b, offs_e, offs_k, (offs_b < B)[:, None] & (offs_e < DH)[None, :],
            (offs_b < B)[:, None] & (offs_k < DH)[None, :], (offs_b[:, None] * NH + head) * DH + offs_e[None, :],
            (head * DH + offs_k[:, None]) * DH + offs_e[None, :], (offs_k < DH)[:, None] & (offs_e < DH)[None, :])


@triton.jit
def _four_ptrs(ptr_a, ptr_b, ptr_c, ptr_d, offs):
    """Pointers (BLOCK_B, COLS, 2, 2) to ``offs`` (BLOCK_B, COLS) of four buffers, [..., p, q] into
    buffer 2 q + p: the element order of ``tl.join(tl.join(a, b), tl.join(c, d))`` and :func:`_split4`."""
    k = tl.arange(0, 2)[None, None, :, None] + 2 * tl.arange(0, 2)[None, None, None, :]
    return tl.where(k == 0, ptr_a, tl.where(k == 1, ptr_b, tl.where(k == 2, ptr_c, ptr_d))) + offs[:, :, None, None]


@triton.jit
def _split4(x):
    """The four (BLOCK_B, COLS) tiles of a (BLOCK_B, COLS, 2, 2) tensor in :func:`_four_ptrs`'s order."""
    ab, cd = tl.split(x)
    a, b = tl.split(ab)
    c, d = tl.split(cd)
    return a, b, c, d


@triton.jit
def _store_joined(ptr_a, ptr_b, ptr_c, ptr_d, offs, mask, joined):
    """Stores a (BLOCK_B, COLS, 2, 2) tile in :func:`_four_ptrs`'s order at ``offs`` (BLOCK_B, COLS) of four
    buffers, one store."""
    tl.store(_four_ptrs(ptr_a, ptr_b, ptr_c, ptr_d, offs), joined, mask=mask[:, :, None, None])


@triton.jit
def _store4(ptr_a, ptr_b, ptr_c, ptr_d, offs, mask, a, b, c, d):
    """Stores the (BLOCK_B, COLS) tiles a, b, c, d at ``offs`` (BLOCK_B, COLS) of four buffers as one
    store of the four joined (one layout conversion instead of four)."""
    _store_joined(ptr_a, ptr_b, ptr_c, ptr_d, offs, mask, tl.join(tl.join(a, b), tl.join(c, d)))


@triton.jit
def _walk_program(B: tl.constexpr, NH: tl.constexpr, SPLIT: tl.constexpr, BLOCK_B: tl.constexpr):
    """(part, batch block, head) of a walk program of the grid (SPLIT [+ followers], batch blocks, NH), taken
    apart from its index in the walk's (SPLIT, batch blocks, NH) grid. The same numbers as the program ids,
    but written so that the compiler sees part < SPLIT, the batch block 0 where the batch fits one block,
    and folds more of the walks' address arithmetic: sm_90 SASS at the 350m sLSTM shape, 796 instead of
    852 instructions per forward step, 790 instead of 868 per backward step (H100: the forward with gates
    stored 5.22 and 5.24 ms against 5.50 and 5.52 with the program ids, docs/slstm.md)."""
    batch_blocks: tl.constexpr = (B + BLOCK_B - 1) // BLOCK_B
    index = tl.program_id(0) + SPLIT * (tl.program_id(1) + batch_blocks * tl.program_id(2))
    group = index // SPLIT
    return index % SPLIT, group % batch_blocks, group // batch_blocks


@triton.jit
def slstm_fw_resident_kernel(
    gate_i, gate_f, gate_z, gate_o, bias, R, c0, n0, m0, h0,  # inputs
    g_all, c_all, n_all, m_all, h_all, ring,  # outputs
    B: tl.constexpr, S: tl.constexpr, NH: tl.constexpr, DH: tl.constexpr, SPLIT: tl.constexpr, COLS: tl.constexpr,
    BLOCK_B: tl.constexpr, DH_PAD: tl.constexpr, DOT_PRECISION: tl.constexpr, STORE_G: tl.constexpr,
    JOIN_GATES: tl.constexpr,
):
    """The forward of triton_kernels.slstm_fw_kernel (same buffers, outputs and STORE_G) with R's slice
    resident; ``ring`` (2, B, NH, DH) words (:func:`_post`) carries h_t in R's dtype in slot t % 2,
    tagged t + 1."""
    part, batch_block, head = _walk_program(B, NH, SPLIT, BLOCK_B)
    dt = R.dtype.element_ty
    if dt.primitive_bitwidth == 32:
        ring = ring.to(tl.pointer_type(tl.int64), bitcast=True)
    offs_b, offs_e, offs_k, mask, mask_h, state, r_offs, r_mask = _program_slice(
        part, batch_block, head, B, NH, DH, COLS, BLOCK_B, DH_PAD)
    full = (offs_b[:, None] * NH + head) * DH + offs_k[None, :]  # every column of h in a ring slot
    c, n, m = load_state(c0, n0, m0, state, mask)
    h_new = tl.load(h0 + state, mask=mask, other=0.0)
    _post(ring, state, mask, h_new.to(dt), 1)
    slot0 = (offs_b[:, None] * (S + 1) * NH + head) * DH + offs_e[None, :]
    tl.store(h_all + slot0, h_new, mask=mask)
    store_state(c_all, n_all, m_all, slot0, mask, c, n, m)
    gates = (offs_b[:, None] * S * 4 * NH + head) * DH + offs_e[None, :]  # step 0 of g_all
    pre_gates = _four_ptrs(gate_i, gate_f, gate_z, gate_o, (offs_b[:, None] * S * NH + head) * DH + offs_e[None, :])
    # the bias as a (BLOCK_B, COLS, 2, 2) tile like the gate inputs' (same pointer shape, so the same
    # layout: no conversion when added in the loop)
    bias_rows = (head * DH + offs_e)[None, :] + 0 * offs_b[:, None]
    bias_tile = tl.load(_four_ptrs(bias, bias + NH * DH, bias + 2 * NH * DH, bias + 3 * NH * DH, bias_rows),
                        mask=mask[:, :, None, None], other=0.0)
    pre = tl.load(pre_gates, mask=mask[:, :, None, None], other=0.0).to(tl.float32) + bias_tile
    if JOIN_GATES:  # one product for the four gates onto their inputs (triton_launch.joins_gate_products)
        r_all = _joined_slice(R, r_offs, r_mask, NH, DH)
        acc = tl.reshape(pre, (BLOCK_B, 4 * COLS))
    else:
        r_i, r_f, r_z, r_o = load_gates(R, r_offs, r_mask, NH * DH * DH)
        p_i, p_f, p_z, p_o = _split4(pre)
    for t in range(S):
        # the gate inputs of step t + 1, loaded a step ahead as one joined tile
        pre_gates += NH * DH
        pre_next = tl.load(pre_gates, mask=(mask & (t + 1 < S))[:, :, None, None], other=0.0).to(tl.float32) + bias_tile
        h = _collect(ring, (t % 2) * B * NH * DH + full, mask_h, t + 1, dt)
        if JOIN_GATES:
            g = tl.reshape(tl.dot(h, r_all, acc, input_precision=DOT_PRECISION), (BLOCK_B, COLS, 2, 2))
            g_i, g_f, g_z, g_o = _split4(g)
        else:
            g_i, g_f, g_z, g_o = _product(h, r_i, r_f, r_z, r_o, p_i, p_f, p_z, p_o, DOT_PRECISION)
        c, n, m, h_new = cell_step(g_i, g_f, g_z, g_o, c, n, m)
        _post(ring, ((t + 1) % 2) * B * NH * DH + state, mask, h_new.to(dt), t + 2)
        nxt = ((offs_b[:, None] * (S + 1) + t + 1) * NH + head) * DH + offs_e[None, :]  # slot t + 1
        _store4(h_all, c_all, n_all, m_all, nxt, mask, h_new, c, n, m)
        if STORE_G:
            if not JOIN_GATES:
                g = tl.join(tl.join(g_i, g_f), tl.join(g_z, g_o))
            _store_joined(g_all, g_all + NH * DH, g_all + 2 * NH * DH, g_all + 3 * NH * DH, gates, mask, g)
        gates += 4 * NH * DH  # step t + 1
        if JOIN_GATES:
            acc = tl.reshape(pre_next, (BLOCK_B, 4 * COLS))
        else:
            # Split into the product's layout here, while the other programs post, not after the next
            # collect where Triton would place the conversion: ``tl.where(t < 0, g, p)`` is p, but
            # sharing a select with g puts p in g's layout at this point. H200, 350m sLSTM shape, gates
            # stored: 5.92 ms, against 6.48 with the step's own gate inputs loaded and split at its top and
            # 6.70 for that with a min of per-word arrival flags (HEAD before); in another run the split
            # left after the collect took 6.59 against 6.20 for that HEAD
            n_i, n_f, n_z, n_o = _split4(pre_next)
            p_i, p_f, p_z, p_o = (tl.where(t < 0, g_i, n_i), tl.where(t < 0, g_f, n_f), tl.where(t < 0, g_z, n_z),
                                  tl.where(t < 0, g_o, n_o))


@triton.jit
def _bw_walk(
    g, R, c_all, n_all, m_all, dh_seq, dc_last, dn_last, dm_last, dh_last, dg, dc0, dn0, dm0, dh0, d_bias, ring,
    progress, part, batch_block, head, B: tl.constexpr, S: tl.constexpr, NH: tl.constexpr, DH: tl.constexpr,
    SPLIT: tl.constexpr, COLS: tl.constexpr, BLOCK_B: tl.constexpr, DH_PAD: tl.constexpr, DOT_PRECISION: tl.constexpr,
    SPLIT_PAD: tl.constexpr, VECTOR: tl.constexpr, SIGNAL_EVERY: tl.constexpr,
):
    """The walk of :func:`slstm_bw_resident_kernel` by program ``part`` of the (``batch_block``, ``head``)
    group; with SIGNAL_EVERY > 0 each program also adds 1 to its group's counter in ``progress`` (batch
    blocks x NH int32) at the end of every step t with t % SIGNAL_EVERY == 0, after its dg store
    (:func:`slstm_bw_fused_kernel`)."""
    dt = R.dtype.element_ty
    if dt.primitive_bitwidth == 32:
        ring = ring.to(tl.pointer_type(tl.int64), bitcast=True)
    offs_b, offs_e, offs_k, mask, mask_full, state, r_offs, r_mask = _program_slice(
        part, batch_block, head, B, NH, DH, COLS, BLOCK_B, DH_PAD)
    r_i, r_f, r_z, r_o = load_gates(R, r_offs, r_mask, NH * DH * DH)
    rt_i, rt_f, rt_z, rt_o = tl.trans(r_i), tl.trans(r_f), tl.trans(r_z), tl.trans(r_o)  # (COLS, DH_PAD)
    ring_post = ((part * B + offs_b[:, None]) * NH + head) * DH + offs_k[None, :]  # this program's partial
    parts = tl.arange(0, SPLIT_PAD)[None, :, None]
    # (BLOCK_B, SPLIT_PAD, COLS): each partial, this program's columns, read in vectors of VECTOR words (a
    # thread's share of a (BLOCK_B, COLS) tile) so that the parts axis stays inside each thread and the
    # sum over it needs no exchange between warps (at the 350m sLSTM shape, 4-word vectors split it over
    # two warps: 42 block barriers per step instead of 13, sm_90 SASS)
    ring_take = tl.max_contiguous(parts * B * NH * DH + state[:, None, :], [1, 1, VECTOR])
    mask_take = mask[:, None, :] & (parts * COLS < DH)  # the parts with columns in DH
    dc, dn, dm = load_state(dc_last, dn_last, dm_last, state, mask)
    dh = tl.load(dh_last + state, mask=mask, other=0.0)
    # the inputs of step t = S - 1: its gates, the state before it (slot t) and the cotangent of its h
    gates = ((offs_b[:, None] * S + S - 1) * 4 * NH + head) * DH + offs_e[None, :]
    prev = ((offs_b[:, None] * (S + 1) + S - 1) * NH + head) * DH + offs_e[None, :]
    seq = ((offs_b[:, None] * S + S - 1) * NH + head) * DH + offs_e[None, :]
    g_i, g_f, g_z, g_o = load_gates(g, gates, mask, NH * DH)
    c_prev, n_prev, m_prev = load_state(c_all, n_all, m_all, prev, mask)
    dh_t = tl.load(dh_seq + seq, mask=mask, other=0.0)
    b_i = tl.zeros((BLOCK_B, COLS), tl.float32)  # the gates' cotangents summed over the steps
    b_f, b_z, b_o = b_i, b_i, b_i
    for step in range(S):
        d_i, d_f, d_z, d_o, dc, dn, dm = cell_grad(g_i, g_f, g_z, g_o, c_prev, n_prev, m_prev, dc, dn, dm, dh + dh_t)
        b_i, b_f, b_z, b_o = b_i + d_i, b_f + d_f, b_z + d_z, b_o + d_o
        partial = tl.dot(d_i.to(dt), rt_i, input_precision=DOT_PRECISION)
        partial = tl.dot(d_f.to(dt), rt_f, partial, input_precision=DOT_PRECISION)
        partial = tl.dot(d_z.to(dt), rt_z, partial, input_precision=DOT_PRECISION)
        partial = tl.dot(d_o.to(dt), rt_o, partial, input_precision=DOT_PRECISION)
        slot = (step % 2) * B * SPLIT * NH * DH
        _post(ring, slot + ring_post, mask_full, partial, step + 1)
        store_gates(dg, gates, mask, d_i, d_f, d_z, d_o, NH * DH)
        more = mask & (step + 1 < S)  # the next step, t - 1, exists
        gates -= 4 * NH * DH
        prev -= NH * DH
        seq -= NH * DH
        g_i, g_f, g_z, g_o = load_gates(g, gates, more, NH * DH)
        c_prev, n_prev, m_prev = load_state(c_all, n_all, m_all, prev, more)
        dh_t = tl.load(dh_seq + seq, mask=more, other=0.0)
        dh = tl.sum(_collect(ring, slot + ring_take, mask_take, step + 1, tl.float32), axis=1)
        # counted after the collect, not right after the dg store: H100, 350m sLSTM shape, a walk without
        # followers took 6.47-6.51 ms so against 6.84-6.90 (6.31-6.49 without counting; session 32, in turns)
        if SIGNAL_EVERY > 0:
            if (S - 1 - step) % SIGNAL_EVERY == 0:  # step t = S - 1 - step ends a block of SIGNAL_EVERY steps
                arrive(progress + batch_block * NH + head)
    store_state(dc0, dn0, dm0, state, mask, dc, dn, dm)
    tl.store(dh0 + state, dh, mask=mask)
    store_gates(d_bias, (offs_b[:, None] * 4 * NH + head) * DH + offs_e[None, :], mask, b_i, b_f, b_z, b_o, NH * DH)


@triton.jit
def slstm_bw_resident_kernel(
    g, R, c_all, n_all, m_all, dh_seq, dc_last, dn_last, dm_last, dh_last,  # inputs
    dg, dc0, dn0, dm0, dh0, d_bias, ring,  # outputs
    B: tl.constexpr, S: tl.constexpr, NH: tl.constexpr, DH: tl.constexpr, SPLIT: tl.constexpr, COLS: tl.constexpr,
    BLOCK_B: tl.constexpr, DH_PAD: tl.constexpr, DOT_PRECISION: tl.constexpr, SPLIT_PAD: tl.constexpr,
    VECTOR: tl.constexpr,
):
    """The backward of triton_kernels.slstm_bw_kernel (same buffers and outputs; dc0, dn0, dm0, dh0 and
    d_bias are written once, after the walk, d_bias summed over the steps in registers) with R's slice
    resident. The cotangent of h_{t-1}, sum over gates of
    dg_t R^T, is summed in parts: each program multiplies its own columns of dg_t by their rows of R^T
    (the forward's slice, transposed) into a partial over every column, posts it, and sums its own
    columns of the SPLIT partials (SPLIT_PAD: SPLIT rounded up to a power of two). ``ring`` (2, SPLIT, B,
    NH, DH) words carries the walk's k-th partials (fp32; t = S - 1 - k) in slot k % 2, tagged k + 1:
    for 16-bit R int32 words (the partial rounded to 15 mantissa bits, far finer than the bf16 / fp16 dg
    it sums), for fp32 R int64 words (the partial exact). A program whose columns are all padding (DH not
    a multiple of COLS x SPLIT) has a partial of exactly 0: it is not collected, and the program, which
    collects nothing, runs ahead unread. One collect per step: H200, B = 16, S = 2048, 4 heads of 256,
    SPLIT = 8, the walk took 7.84 ms, against 12.08 ms when each program collected the four gates' full
    dg_t (four spins) for a product over K = 4 x DH."""
    # ``ring`` stands in for the progress counters, which a walk without SIGNAL_EVERY never touches
    part, batch_block, head = _walk_program(B, NH, SPLIT, BLOCK_B)
    _bw_walk(g, R, c_all, n_all, m_all, dh_seq, dc_last, dn_last, dm_last, dh_last, dg, dc0, dn0, dm0, dh0,
             d_bias, ring, ring, part, batch_block, head, B, S, NH, DH, SPLIT, COLS, BLOCK_B, DH_PAD, DOT_PRECISION,
             SPLIT_PAD, VECTOR, 0)


@triton.jit
def slstm_bw_fused_kernel(
    g, R, c_all, n_all, m_all, dh_seq, dc_last, dn_last, dm_last, dh_last, h_all,  # inputs
    dg, dc0, dn0, dm0, dh0, d_bias, dR_parts, d_i, d_f, d_z, d_o, progress, ring,  # outputs
    B: tl.constexpr, S: tl.constexpr, NH: tl.constexpr, DH: tl.constexpr, SPLIT: tl.constexpr, COLS: tl.constexpr,
    BLOCK_B: tl.constexpr, DH_PAD: tl.constexpr, DOT_PRECISION: tl.constexpr, SPLIT_PAD: tl.constexpr,
    VECTOR: tl.constexpr, DR_BLOCK_N: tl.constexpr, DR_BLOCK: tl.constexpr,
):
    """:func:`slstm_bw_resident_kernel` and the recurrent kernel's gradient in one launch: grid (SPLIT +
    followers, batch blocks, NH), programs 0 .. SPLIT - 1 of a (batch block, head) group walk it, the
    others follow their walk through time (triton_dr.dr_follower: 4 gates x tiles of DR_BLOCK x DR_BLOCK,
    DR_BLOCK_N steps per block), summing dR into ``dR_parts`` (batch blocks, 4, NH, DH, DH) fp32 and
    passing dg on to ``d_i, d_f, d_z, d_o`` (B, S, NH, DH) in the gate inputs' dtype, while the walk
    runs on other SMs. ``progress`` (batch blocks x NH int32, zeroed before the launch) counts the
    walk's finished blocks. Every program must be resident at once (the launcher checks the grid)."""
    # the walk takes its indices from the program ids, not from _walk_program: H100, 350m sLSTM shape, this
    # launch took 7.06 and 7.38 ms with _walk_program's indices (810 instead of 890 SASS instructions per
    # step) against 6.59 and 6.32 with the program ids, alternating processes; on an H100 where every
    # variant of this launch took 7.2-7.3 ms the two were equal (session 32, docs/slstm.md)
    if tl.program_id(0) < SPLIT:
        _bw_walk(g, R, c_all, n_all, m_all, dh_seq, dc_last, dn_last, dm_last, dh_last, dg, dc0, dn0, dm0, dh0,
                 d_bias, ring, progress, tl.program_id(0), tl.program_id(1), tl.program_id(2), B, S, NH, DH, SPLIT,
                 COLS, BLOCK_B, DH_PAD, DOT_PRECISION, SPLIT_PAD, VECTOR, DR_BLOCK_N)
    else:
        dr_follower(h_all, dg, R, dR_parts, d_i, d_f, d_z, d_o, progress, tl.program_id(0) - SPLIT,
                    tl.program_id(1), tl.program_id(2), B, S, NH, DH, SPLIT, BLOCK_B, DR_BLOCK_N, DR_BLOCK, DR_BLOCK)
# fmt: on
