"""Launches the fused sLSTM Triton kernels (triton_kernels.py) with checked tuning choices.

Tuning (:class:`Tuning`, one set for forward and backward): ``block_b`` batch rows per program (the
tl.dot M tile, >= 16), ``block_dh`` output columns and ``block_k`` rows of R per tile (powers of two
in [16, DH padded]), ``split`` programs sharing one (batch block, head) (1..32; > 1 needs the whole
grid resident on the GPU), ``num_warps``, ``num_stages``. Grid: (split, ceil(B / block_b), NH).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from ..triton import launch
from ..triton.shared import MIN_BLOCK, cdiv, check_int_range, check_power_of_two, dot_precision, padded_dim
from . import triton_kernels
from .common import Dims, States

TRITON_RECURRENT_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)
MAX_BLOCK_B = 128
MAX_SPLIT = 32


@dataclasses.dataclass(frozen=True)
class Tuning:
    block_b: int
    block_dh: int
    block_k: int
    split: int
    num_warps: int
    num_stages: int

    def columns(self, DH: int) -> int:
        """Columns per program: DH / split rounded up to a multiple of both tiles."""
        tile = max(self.block_dh, self.block_k)
        return cdiv(DH, self.split * tile) * tile

    def grid(self, dims: Dims) -> tuple[int, int, int]:
        return self.split, cdiv(dims.B, self.block_b), dims.NH


def resolve_tuning(
    name: str, dims: Dims, block_b=None, block_dh=None, block_k=None, split=None, num_warps=None, num_stages=None
) -> Tuning:
    """Fills ``None`` choices with the defaults (16 rows, 64-wide tiles or DH padded if smaller, split 1,
    4 warps, 2 stages) and checks every rule (ValueError naming the kernel and the option)."""
    dh_pad = padded_dim(dims.DH)
    tuning = Tuning(
        block_b=MIN_BLOCK if block_b is None else block_b,
        block_dh=min(64, dh_pad) if block_dh is None else block_dh,
        block_k=min(64, dh_pad) if block_k is None else block_k,
        split=1 if split is None else split,
        num_warps=4 if num_warps is None else num_warps,
        num_stages=2 if num_stages is None else num_stages,
    )
    try:
        check_power_of_two("block_b", tuning.block_b, MIN_BLOCK, MAX_BLOCK_B)
        check_power_of_two("block_dh", tuning.block_dh, MIN_BLOCK, dh_pad)
        check_power_of_two("block_k", tuning.block_k, MIN_BLOCK, dh_pad)
        check_power_of_two("num_warps", tuning.num_warps, 1, 16)
        check_int_range("num_stages", tuning.num_stages, 1, 8)
        check_int_range("split", tuning.split, 1, MAX_SPLIT)
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None
    if tuning.split > 1 and launch.gpu_visible():
        _check_resident(name, tuning, dims)
    return tuning


def _check_resident(name: str, tuning: Tuning, dims: Dims) -> None:
    """split > 1: the programs of a group wait for each other, so every program must run at once."""
    programs = math.prod(tuning.grid(dims))
    sms = jax.devices("gpu")[0].core_count
    if programs > sms:
        raise ValueError(
            f"{name}: split={tuning.split} launches {programs} programs (split x batch blocks x heads) but the "
            f"GPU has {sms} SMs; they must all be resident, use a smaller split or larger block_b"
        )


def check_recurrent_dtype(name: str, recurrent_kernel) -> None:
    if not any(recurrent_kernel.dtype == d for d in TRITON_RECURRENT_DTYPES):
        raise ValueError(f"{name}: recurrent_kernel must be float32, bfloat16 or float16, got {recurrent_kernel.dtype}")


def _launch(kernel, inputs, out_shape, dims: Dims, tuning: Tuning, recurrent_dtype):
    """Launches ``kernel`` with ``out_shape`` plus the group counters (zeroed; dropped from the result)."""
    split, batch_blocks, NH = grid = tuning.grid(dims)
    sync = jax.ShapeDtypeStruct((batch_blocks * NH,), jnp.int32)
    *outputs, _ = launch.triton_call(
        *inputs,
        kernel=kernel,
        out_shape=(*out_shape, sync),
        grid=grid,
        zeroed_outputs=(len(out_shape),),
        num_warps=tuning.num_warps,
        num_stages=tuning.num_stages,
        B=dims.B,
        S=dims.S,
        NH=NH,
        DH=dims.DH,
        SPLIT=split,
        COLS=tuning.columns(dims.DH),
        BLOCK_B=tuning.block_b,
        BLOCK_DH=tuning.block_dh,
        BLOCK_K=tuning.block_k,
        DOT_PRECISION=dot_precision(recurrent_dtype),
    )
    return outputs


def slstm_fw(pre, recurrent_kernel, initial: States, dims: Dims, tuning: Tuning) -> tuple[jax.Array, States]:
    """pre (B, S, 4, NH, DH) fp32 -> (g (B, S, 4, NH, DH) fp32, every step's full gate pre-activations
    ``pre + h_{t-1} R``; every state: :class:`States` of (B, S + 1, NH, DH) fp32 histories, slot 0 =
    ``initial`` and slot t + 1 = the state after step t)."""
    B, S, NH, DH = dims
    history = jax.ShapeDtypeStruct((B, S + 1, NH, DH), jnp.float32)
    g, *out = _launch(
        triton_kernels.slstm_fw_kernel,
        (pre, recurrent_kernel, *initial),
        (jax.ShapeDtypeStruct(pre.shape, jnp.float32),) + (history,) * 4,
        dims,
        tuning,
        recurrent_kernel.dtype,
    )
    return g, States(*out)


def slstm_bw(g, recurrent_kernel, history: States, dh_seq, d_last: States, dims: Dims, tuning: Tuning):
    """Reverse-time walk: g (B, S, 4, NH, DH) fp32 full gate pre-activations, ``history`` from
    :func:`slstm_fw`, dh_seq (B, S, NH, DH) and ``d_last`` the cotangents of the outputs ->
    (dg (B, S, 4, NH, DH) fp32, the initial state's cotangents as :class:`States`)."""
    B, S, NH, DH = dims
    state = jax.ShapeDtypeStruct((B, NH, DH), jnp.float32)
    out_shape = (jax.ShapeDtypeStruct(g.shape, jnp.float32),) + (state,) * 4
    inputs = (
        g,
        recurrent_kernel,
        history.c,
        history.n,
        history.m,
        dh_seq.astype(jnp.float32),
        *(d.astype(jnp.float32) for d in d_last),
    )
    dg, *d_initial = _launch(triton_kernels.slstm_bw_kernel, inputs, out_shape, dims, tuning, recurrent_kernel.dtype)
    return dg, States(*d_initial)


DR_BLOCK_N = 32  # (b, t) rows per tl.dot of the recurrent kernel's gradient
DR_BLOCK = 64  # its output tiles (DH padded if smaller)


def slstm_dr(h_history, dg, recurrent_kernel, dims: Dims) -> jax.Array:
    """The recurrent kernel's gradient: h_history (B, S + 1, NH, DH) fp32 from :func:`slstm_fw`, dg
    (B, S, 4, NH, DH) fp32 from :func:`slstm_bw` -> (4, NH, DH, DH) fp32 (h rounded to R's dtype, like
    the forward's product; fp32 accumulation)."""
    B, S, NH, DH = dims
    block = min(DR_BLOCK, padded_dim(DH))
    return launch.triton_call(
        h_history,
        dg,
        recurrent_kernel,
        kernel=triton_kernels.slstm_dr_kernel,
        out_shape=jax.ShapeDtypeStruct(recurrent_kernel.shape, jnp.float32),
        grid=(cdiv(DH, block), cdiv(DH, block), 4 * NH),
        num_warps=4,
        num_stages=2,
        B=B,
        S=S,
        NH=NH,
        DH=DH,
        BLOCK_N=DR_BLOCK_N,
        BLOCK_D=block,
        BLOCK_E=block,
    )
