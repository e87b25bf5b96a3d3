"""Launches the fused sLSTM Triton kernels (triton_kernels.py, triton_resident.py, triton_dr.py) with checked
tuning choices.

Tuning (:class:`Tuning`, one set per walk, forward and backward, equal by default): ``block_b`` batch rows
per program (the tl.dot M tile, >= 16), ``block_dh`` output columns and ``block_k`` rows of R per tile
(powers of two in [16, DH padded]), ``split`` programs sharing one (batch block, head) (1..32; > 1 needs
the whole grid resident on the GPU), ``num_warps``, ``num_stages``, ``resident`` (R's slice held on chip:
triton_resident.py; needs one ``block_dh`` tile per program and a slice of at most RESIDENT_MAX_BYTES),
``follow_dr`` (backward only, off unless given: the recurrent kernel's gradient computed by extra programs
of the resident walk's launch that follow it through time, triton_resident.slstm_bw_fused_kernel; needs
``resident``, columns of DH in every walk program and the whole grid resident on the GPU). Grid: (split,
ceil(B / block_b), NH), plus :func:`follower_programs` along the first axis with ``follow_dr``.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from ..triton import launch
from ..triton.shared import (
    MIN_BLOCK,
    cdiv,
    check_int_range,
    check_power_of_two,
    dot_precision,
    next_pow2,
    padded_dim,
)
from . import triton_dr, triton_kernels, triton_resident
from .common import Dims, GateInputs, States

TRITON_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)  # of the gate inputs and of R
MAX_BLOCK_B = 128
MAX_SPLIT = 32
DEFAULT_MAX_BLOCK_B = 64
DEFAULT_MAX_SPLIT = 16
# The default split gives each program of either walk the fewest columns a tile has (MIN_BLOCK = 16) where
# the SMs allow. Backward: H200, bf16 R, S = 2048, splits 4 / 8 / 16 at six shapes (B 8-32, DH 128-512;
# benchmarks/results/h200_session14_2026-12-04.md), fastest at 16 columns wherever the split reached them.
# Forward, since its four gate products are one dot where one gate's would leave warps idle
# (triton_resident): H100, five shapes (B 8-16, DH 128-256; benchmarks/results/h100_session34_2026-12-06.md),
# 8-12 % faster at 16 columns than at the 32 (block_b x columns = 512 elements) that were fastest before.
# R's slice per program (4 x DH padded x columns) as staged in shared memory; fp32 counts twice (3xTF32
# dots keep a high and a low TF32 part). H200: a 128 KiB bf16 slice ran, a 128 KiB fp32 one asked for
# 272 KiB of shared memory (227 KiB per block).
RESIDENT_MAX_BYTES = 128 * 1024
# The recurrent kernel's gradient (triton_dr.py); H200, B = 16, S = 2048, 4 heads of 256, bf16 R
# (2026-12-03): 128 x 128 tiles, 64 steps per dot, 4 warps, the rows split until the grid fills the GPU
# (0.84 ms; 8 warps 0.86-1.11, 64 x 64 tiles 1.17-1.33; the 64 x 64 tiles of 32 (b, t) rows before, 2.85).
DR_BLOCK = 128
DR_BLOCK_N = 64
DR_NUM_WARPS = 4
DR_NUM_STAGES = 2
MAX_DR_BLOCK = 256
MAX_DR_SPLIT_ROWS = 1024


def follower_tile(DH: int) -> int:
    """Rows and columns of the dR tile each follower of the backward walk sums: DR_BLOCK, DH padded if less."""
    return min(DR_BLOCK, padded_dim(DH))


def follower_programs(DH: int) -> int:
    """Programs per (batch block, head) that follow the backward walk for dR: 4 gates x its tiles."""
    return 4 * cdiv(DH, follower_tile(DH)) ** 2


@dataclasses.dataclass(frozen=True)
class Tuning:
    block_b: int
    block_dh: int
    block_k: int
    split: int
    num_warps: int
    num_stages: int
    resident: bool = False
    follow_dr: bool = False

    def columns(self, DH: int) -> int:
        """Columns per program: DH / split rounded up to a multiple of both tiles."""
        tile = max(self.block_dh, self.block_k)
        return cdiv(DH, self.split * tile) * tile

    def grid(self, dims: Dims) -> tuple[int, int, int]:
        followers = follower_programs(dims.DH) if self.follow_dr else 0
        return self.split + followers, cdiv(dims.B, self.block_b), dims.NH


def _gpu_sms() -> int | None:
    """The visible GPU's SM count, None without one."""
    return jax.devices("gpu")[0].core_count if launch.gpu_visible() else None


def resolve_tuning(
    name: str,
    dims: Dims,
    block_b=None,
    block_dh=None,
    block_k=None,
    split=None,
    num_warps=None,
    num_stages=None,
    resident=None,
    follow_dr=None,
    recurrent_dtype=jnp.bfloat16,
    backward: bool = False,
) -> Tuning:
    """Fills ``None`` choices with :func:`default_tuning` (for the visible GPU's SM count; ``resident``:
    where R's slice in ``recurrent_dtype`` fits; ``follow_dr`` off, and ignored unless ``backward``) and
    checks every rule (ValueError naming the kernel and the option)."""
    sms = _gpu_sms()
    given = dict(
        block_b=block_b, block_dh=block_dh, block_k=block_k, split=split, num_warps=num_warps, num_stages=num_stages
    )
    try:  # the defaults divide by these
        if split is not None:
            check_int_range("split", split, 1, MAX_SPLIT)
        if block_b is not None:
            check_power_of_two("block_b", block_b, MIN_BLOCK, MAX_BLOCK_B)
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None
    tuning = default_tuning(dims, sms, **{k: v for k, v in given.items() if v is not None})
    slice_bytes = resident_slice_bytes(tuning, dims.DH, recurrent_dtype)
    fits = tuning.columns(dims.DH) == tuning.block_dh and slice_bytes <= RESIDENT_MAX_BYTES
    tuning = dataclasses.replace(tuning, resident=fits if resident is None else resident)
    try:
        check_power_of_two("block_b", tuning.block_b, MIN_BLOCK, MAX_BLOCK_B)
        check_power_of_two("block_dh", tuning.block_dh, MIN_BLOCK, padded_dim(dims.DH))
        check_power_of_two("block_k", tuning.block_k, MIN_BLOCK, padded_dim(dims.DH))
        check_power_of_two("num_warps", tuning.num_warps, 1, 16)
        check_int_range("num_stages", tuning.num_stages, 1, 8)
        check_int_range("split", tuning.split, 1, MAX_SPLIT)
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None
    if tuning.resident not in (True, False):
        raise ValueError(f"{name}: resident={tuning.resident!r} must be a bool (or 0 / 1)")
    if tuning.resident and tuning.columns(dims.DH) != tuning.block_dh:
        raise ValueError(
            f"{name}: resident needs one block_dh tile per program, but split={tuning.split} x "
            f"block_dh={tuning.block_dh} leaves {tuning.columns(dims.DH)} of DH={dims.DH} columns per program"
        )
    if tuning.resident and slice_bytes > RESIDENT_MAX_BYTES:
        raise ValueError(
            f"{name}: resident R slice (4 x {padded_dim(dims.DH)} x {tuning.block_dh} "
            f"{jnp.dtype(recurrent_dtype).name}) takes {slice_bytes} bytes on chip, more than {RESIDENT_MAX_BYTES}"
        )
    tuning = dataclasses.replace(tuning, resident=bool(tuning.resident))
    if follow_dr not in (None, True, False):
        raise ValueError(f"{name}: follow_dr={follow_dr!r} must be a bool (or 0 / 1)")
    # every walk program must own columns of DH: one with padding only runs ahead of the others and would
    # count blocks done that they have not stored
    columns = tuning.columns(dims.DH)
    padding_only = tuning.split - cdiv(dims.DH, columns)
    # The backward's dR followers run only when asked for: on each of the last eight H100s that timed both
    # (sessions 32-34) their launch took 0.4-0.8 ms longer than the walk followed by the dR kernel, on the
    # machines before (sessions 31-32) 0.2-0.5 ms less (docs/slstm.md, session 34)
    if not backward or follow_dr is None:
        follow_dr = False
    elif follow_dr and not tuning.resident:
        raise ValueError(f"{name}: follow_dr needs resident (R's slice on chip), which is off")
    elif follow_dr and padding_only:
        raise ValueError(
            f"{name}: follow_dr needs every walk program to own columns, but split={tuning.split} x {columns} "
            f"columns leaves {padding_only} of them with padding only at DH={dims.DH}"
        )
    tuning = dataclasses.replace(tuning, follow_dr=bool(follow_dr))
    if (tuning.split > 1 or tuning.follow_dr) and sms is not None:
        _check_resident(name, tuning, dims, sms)
    return tuning


def resident_slice_bytes(tuning: Tuning, DH: int, recurrent_dtype) -> int:
    """On-chip bytes of one program's slice of R (4 gates x DH padded x block_dh) in ``recurrent_dtype``,
    twice that for fp32 (its 3xTF32 dots stage two TF32 parts)."""
    itemsize = jnp.dtype(recurrent_dtype).itemsize
    return 4 * padded_dim(DH) * tuning.block_dh * itemsize * (2 if itemsize == 4 else 1)


def default_tuning(dims: Dims, sms: int | None, **given) -> Tuning:
    """``given`` choices (unchecked) completed by the defaults of either walk: ``block_b`` the batch rounded
    up to a power of two in [16, 64]; ``split`` (only with a GPU of ``sms`` SMs, else 1: the interpreter
    runs one program at a time) the largest power of two <= DEFAULT_MAX_SPLIT that keeps split x batch
    blocks x heads <= sms and at least MIN_BLOCK columns (and the given tiles) per program; tiles of
    min(64, DH padded / split) columns; 4 warps, 2 stages."""
    dh_pad = padded_dim(dims.DH)
    block_b = given.get("block_b", min(DEFAULT_MAX_BLOCK_B, max(MIN_BLOCK, next_pow2(dims.B))))
    split = given.get("split")
    if split is None:
        groups = cdiv(dims.B, block_b) * dims.NH
        columns = max(MIN_BLOCK, given.get("block_dh", 0), given.get("block_k", 0))  # the fewest
        split = 1
        while (
            sms is not None
            and split < DEFAULT_MAX_SPLIT
            and 2 * split * groups <= sms
            and dh_pad // (2 * split) >= columns
        ):
            split *= 2
    tile = max(MIN_BLOCK, min(64, dh_pad // split))
    return Tuning(
        block_b=block_b,
        block_dh=given.get("block_dh", tile),
        block_k=given.get("block_k", tile),
        split=split,
        num_warps=given.get("num_warps", 4),
        num_stages=given.get("num_stages", 2),
    )


def _check_resident(name: str, tuning: Tuning, dims: Dims, sms: int) -> None:
    """split > 1 or follow_dr: programs wait for each other, so every program must run at once."""
    programs = math.prod(tuning.grid(dims))
    if programs > sms:
        followers = f" + {follower_programs(dims.DH)} dR followers" if tuning.follow_dr else ""
        raise ValueError(
            f"{name}: split={tuning.split}{followers} launches {programs} programs (per batch block and head) but "
            f"the GPU has {sms} SMs; they must all be resident, use a smaller split, larger block_b or "
            f"follow_dr=False"
        )


def check_triton_dtype(name: str, what: str, dtype) -> None:
    """ValueError naming the kernel and the input unless ``dtype`` is one of TRITON_DTYPES."""
    if not any(dtype == d for d in TRITON_DTYPES):
        raise ValueError(f"{name}: {what} must be float32, bfloat16 or float16, got {jnp.dtype(dtype).name}")


def _ring_words(recurrent_dtype) -> int:
    """int32s per exchange word of the resident kernels: 1 for 16-bit R (a 16-bit h, or a rounded fp32
    partial, with its tag; H200: 16-bit words made the forward 3 % faster), 2 for fp32 R (an exact fp32
    value and its tag)."""
    return jnp.dtype(recurrent_dtype).itemsize // 2


def _launch(
    kernel, inputs, out_shape, dims: Dims, tuning: Tuning, recurrent_dtype, ring_tiles: int, zeroed=(), **constexprs
):
    """Launches ``kernel`` (streaming or resident, as ``tuning.resident`` says) on ``tuning``'s grid with
    ``out_shape`` (those at indices ``zeroed`` zeroed first) plus a zeroed buffer (dropped from the
    result) and the kernel's own ``constexprs``. The buffer: the streaming kernels' group counters, or the
    resident kernels' exchange ring: two slots of ``ring_tiles`` (B, NH, DH) tensors of words of
    :func:`_ring_words` int32 each (triton_resident._post)."""
    _, batch_blocks, NH = grid = tuning.grid(dims)
    if tuning.resident:
        sync = jax.ShapeDtypeStruct((2, ring_tiles, dims.B, NH, dims.DH, _ring_words(recurrent_dtype)), jnp.int32)
        tiles = dict(DH_PAD=padded_dim(dims.DH))
    else:
        sync = jax.ShapeDtypeStruct((batch_blocks * NH,), jnp.int32)
        tiles = dict(BLOCK_DH=tuning.block_dh, BLOCK_K=tuning.block_k)
    *outputs, _ = launch.triton_call(
        *inputs,
        kernel=kernel,
        out_shape=(*out_shape, sync),
        grid=grid,
        zeroed_outputs=(*zeroed, len(out_shape)),
        num_warps=tuning.num_warps,
        num_stages=tuning.num_stages,
        B=dims.B,
        S=dims.S,
        NH=NH,
        DH=dims.DH,
        SPLIT=tuning.split,
        COLS=tuning.columns(dims.DH),
        BLOCK_B=tuning.block_b,
        DOT_PRECISION=dot_precision(recurrent_dtype),
        **tiles,
        **constexprs,
    )
    return outputs


def joins_gate_products(tuning: Tuning, DH: int) -> bool:
    """Whether the resident forward multiplies h by the four gates' slices joined side by side in one dot:
    where one gate's (block_b, columns) product has fewer 16 x 8 MMA tiles than the program has warps,
    every warp would compute all of it, and then every gate's math (sm_90 SASS at the 350m sLSTM shape,
    split 16: 128 MMAs per warp and step with four dots, 32 with one)."""
    return (tuning.block_b // 16) * (tuning.columns(DH) // 8) < tuning.num_warps


def slstm_fw(
    gates: GateInputs, bias, recurrent_kernel, initial: States, dims: Dims, tuning: Tuning, store_gates: bool = True
) -> tuple[jax.Array | None, States]:
    """gates (i, f, z, o) each (B, S, NH, DH), bias (4, NH, DH) fp32 -> (g (B, S, 4, NH, DH) fp32, every
    step's full gate pre-activations ``gate + bias + h_{t-1} R``, or None unless ``store_gates`` (only the
    backward reads them); every state: :class:`States` of (B, S + 1, NH, DH) fp32 histories, slot 0 =
    ``initial`` and slot t + 1 = the state after step t)."""
    B, S, NH, DH = dims
    history = jax.ShapeDtypeStruct((B, S + 1, NH, DH), jnp.float32)
    g_shape = (B, S, 4, NH, DH) if store_gates else (1,)
    kernel, extra = triton_kernels.slstm_fw_kernel, {}
    if tuning.resident:
        kernel, extra = triton_resident.slstm_fw_resident_kernel, dict(JOIN_GATES=joins_gate_products(tuning, DH))
    g, *out = _launch(
        kernel,
        (*gates, bias, recurrent_kernel, *initial),
        (jax.ShapeDtypeStruct(g_shape, jnp.float32),) + (history,) * 4,
        dims,
        tuning,
        recurrent_kernel.dtype,
        ring_tiles=1,
        STORE_G=store_gates,
        **extra,
    )
    return (g if store_gates else None), States(*out)


def slstm_bw(
    g, recurrent_kernel, history: States, dh_seq, d_last: States, dims: Dims, tuning: Tuning, gate_dtype=jnp.float32
) -> tuple[jax.Array, GateInputs, jax.Array, States]:
    """The backward: g (B, S, 4, NH, DH) fp32 full gate pre-activations and ``history`` from
    :func:`slstm_fw`, dh_seq (B, S, NH, DH) and ``d_last`` the cotangents of the outputs -> (dR (4, NH, DH,
    DH) fp32, the gate inputs' cotangents as :class:`GateInputs` of (B, S, NH, DH) in ``gate_dtype``, the
    bias gradient (4, NH, DH) fp32, the initial state's cotangents as :class:`States`). A reverse-time
    walk writes dg (fp32) and sums it over the steps for the bias; dR and the gate cotangents come from
    :func:`slstm_dr` after it, or with ``tuning.follow_dr`` from programs of the walk's launch."""
    B, S, NH, DH = dims
    if tuning.follow_dr and not tuning.resident:
        raise ValueError(f"slstm_bw: follow_dr needs resident, got {tuning}")
    state = jax.ShapeDtypeStruct((B, NH, DH), jnp.float32)
    out_shape = (jax.ShapeDtypeStruct(g.shape, jnp.float32),) + (state,) * 4
    out_shape += (jax.ShapeDtypeStruct((B, 4, NH, DH), jnp.float32),)
    inputs = (
        g,
        recurrent_kernel,
        history.c,
        history.n,
        history.m,
        dh_seq.astype(jnp.float32),
        *(d.astype(jnp.float32) for d in d_last),
    )
    kernel, extra = triton_kernels.slstm_bw_kernel, {}
    if tuning.resident:
        # the collect's words per vector load: each thread's share of a (block_b, columns) tile, at most 16
        # bytes, so the (block_b, parts, columns) tile keeps the parts axis inside each thread
        share = tuning.block_b * tuning.columns(DH) // (32 * tuning.num_warps)
        vector = max(1, min(4 // _ring_words(recurrent_kernel.dtype), share))
        kernel, extra = triton_resident.slstm_bw_resident_kernel, dict(SPLIT_PAD=next_pow2(tuning.split), VECTOR=vector)
    if tuning.follow_dr:
        batch_blocks = tuning.grid(dims)[1]
        inputs += (history.h,)
        out_shape += (
            jax.ShapeDtypeStruct((batch_blocks, *recurrent_kernel.shape), jnp.float32),
            *(jax.ShapeDtypeStruct((B, S, NH, DH), gate_dtype),) * 4,
            jax.ShapeDtypeStruct((batch_blocks * NH,), jnp.int32),
        )
        kernel = triton_resident.slstm_bw_fused_kernel
        extra.update(DR_BLOCK_N=DR_BLOCK_N, DR_BLOCK=follower_tile(DH), zeroed=(len(out_shape) - 1,))
    dg, dc0, dn0, dm0, dh0, d_bias, *dr_outputs = _launch(
        kernel, inputs, out_shape, dims, tuning, recurrent_kernel.dtype, ring_tiles=tuning.split, **extra
    )
    d_initial = States(dc0, dn0, dm0, dh0)
    if tuning.follow_dr:
        dR_parts, *d_gates, _ = dr_outputs
        d_recurrent, d_gates = jnp.sum(dR_parts, axis=0), GateInputs(*d_gates)
    else:
        d_recurrent, d_gates = slstm_dr(history.h, dg, recurrent_kernel, dims, gate_dtype)
    return d_recurrent, d_gates, jnp.sum(d_bias, axis=0), d_initial


def dr_split_rows(dims: Dims, block: int, block_n: int, sms: int | None) -> int:
    """Parts of the (b, t) rows summed by programs of their own: the smallest power of two whose grid
    (tiles x parts x 4 gates x heads) has at least one program per SM (1 without a GPU), at most one
    part per BLOCK_N-step block of rows."""
    tiles = cdiv(dims.DH, block) ** 2 * 4 * dims.NH
    blocks = dims.B * cdiv(dims.S, block_n)
    split = 1
    while sms is not None and tiles * split < sms and 2 * split <= blocks:
        split *= 2
    return split


def slstm_dr(
    h_history,
    dg,
    recurrent_kernel,
    dims: Dims,
    gate_dtype=jnp.float32,
    *,
    block: int = DR_BLOCK,
    block_n: int = DR_BLOCK_N,
    split_rows: int | None = None,
    num_warps: int = DR_NUM_WARPS,
    num_stages: int = DR_NUM_STAGES,
) -> tuple[jax.Array, GateInputs]:
    """The recurrent kernel's gradient and dg passed on: h_history (B, S + 1, NH, DH) fp32 from
    :func:`slstm_fw`, dg (B, S, 4, NH, DH) fp32 from :func:`slstm_bw` -> (dR (4, NH, DH, DH) fp32, h rounded
    to R's dtype like the forward's product, fp32 accumulation; dg per gate, :class:`GateInputs` of (B, S, NH,
    DH) in ``gate_dtype``: the gate inputs' cotangents). Tiles of ``block`` x ``block`` (DH padded if
    smaller), ``block_n`` steps per product, the rows in ``split_rows`` parts (default
    :func:`dr_split_rows`), each a (4, NH, DH, DH) fp32 buffer until XLA adds them. ValueError names a bad
    tuning value."""
    B, S, NH, DH = dims
    try:
        check_power_of_two("block", block, MIN_BLOCK, MAX_DR_BLOCK)
        check_power_of_two("block_n", block_n, MIN_BLOCK, MAX_DR_BLOCK)
        check_power_of_two("num_warps", num_warps, 1, 16)
        check_int_range("num_stages", num_stages, 1, 8)
        if split_rows is not None:
            check_int_range("split_rows", split_rows, 1, MAX_DR_SPLIT_ROWS)
    except ValueError as err:
        raise ValueError(f"slstm_dr: {err}") from None
    block = min(block, padded_dim(DH))
    if split_rows is None:
        split_rows = dr_split_rows(dims, block, block_n, _gpu_sms())
    parts, *d_gates = launch.triton_call(
        h_history,
        dg,
        recurrent_kernel,
        kernel=triton_dr.slstm_dr_kernel,
        out_shape=(
            jax.ShapeDtypeStruct((split_rows, *recurrent_kernel.shape), jnp.float32),
            *(jax.ShapeDtypeStruct((B, S, NH, DH), gate_dtype),) * 4,
        ),
        grid=(cdiv(DH, block) ** 2, split_rows, 4 * NH),
        num_warps=num_warps,
        num_stages=num_stages,
        B=B,
        S=S,
        NH=NH,
        DH=DH,
        BLOCK_N=block_n,
        BLOCK_D=block,
        BLOCK_E=block,
        SPLIT_ROWS=split_rows,
    )
    return jnp.sum(parts, axis=0), GateInputs(*d_gates)
