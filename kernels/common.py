"""Shared input checks and helpers for every mLSTM backend (pure JAX, Triton).

Shapes: q, k (B, NH, S, DHQK); v (B, NH, S, DHV); i, f (B, NH, S);
c (B, NH, DHQK, DHV); n (B, NH, DHQK); m (B, NH).
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

FLOAT_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16, jnp.float64)
# Padding steps leave the state untouched: exp(i) = 0 and sigmoid(f) = 1 (log_sigmoid(f) = 0 in fp32).
PAD_IGATE = -1e30
PAD_FGATE = 1e30
# The package's one chunk-size policy (every chunkwise backend): LONG_CHUNK from LONG_SEQUENCE steps on
# (the H100-tuned choice), else SHORT_CHUNK, shortened for sequences shorter than that (less padding).
LONG_CHUNK, SHORT_CHUNK, LONG_SEQUENCE = 256, 128, 2048
MIN_CHUNK = 16  # the smallest tl.dot tile: the Triton kernels' smallest chunk
# The name (``jax.ad_checkpoint.checkpoint_name``) of the Triton backends' custom_vjp residuals, mLSTM and
# sLSTM: a rematerialisation policy that saves it keeps them, so the backward does not run the forward kernels
# again (their outputs are then unused and XLA drops the calls).
KERNEL_RESIDUALS = "triton_kernel_residuals"


class Dims(NamedTuple):
    B: int
    NH: int
    S: int
    DHQK: int
    DHV: int


def _shape_error(name: str, got, expected: str) -> ValueError:
    return ValueError(f"{name} has shape {tuple(got)}, expected {expected}")


def _check_rank_and_dtype(name: str, x, rank: int) -> None:
    if x.ndim != rank:
        raise ValueError(f"{name} must have rank {rank}, got shape {tuple(x.shape)}")
    if not any(x.dtype == d for d in FLOAT_DTYPES):
        raise ValueError(f"{name} must be a float array (fp32/bf16/fp16/fp64), got dtype {x.dtype}")


def check_inputs(q, k, v, i, f, c_initial=None, n_initial=None, m_initial=None) -> Dims:
    """Validates ranks, shapes and dtypes of a sequence call; returns its dims."""
    for name, x, rank in (("q", q, 4), ("k", k, 4), ("v", v, 4), ("i", i, 3), ("f", f, 3)):
        _check_rank_and_dtype(name, x, rank)
    B, NH, S, DHQK = q.shape
    DHV = v.shape[-1]
    if k.shape != q.shape:
        raise _shape_error("k", k.shape, f"q's shape {(B, NH, S, DHQK)}")
    if v.shape[:3] != (B, NH, S):
        raise _shape_error("v", v.shape, f"(B, NH, S, DHV) = {(B, NH, S)} + (DHV,)")
    for name, x in (("i", i), ("f", f)):
        if x.shape != (B, NH, S):
            raise _shape_error(name, x.shape, f"(B, NH, S) = {(B, NH, S)}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if S < 1:
        raise ValueError("sequence length S must be >= 1")
    for name, x, shape in (
        ("c_initial", c_initial, (B, NH, DHQK, DHV)),
        ("n_initial", n_initial, (B, NH, DHQK)),
        ("m_initial", m_initial, (B, NH)),
    ):
        if x is not None and tuple(x.shape) != shape:
            raise _shape_error(name, x.shape, f"{shape}")
    return Dims(B, NH, S, DHQK, DHV)


def check_options(chunk_size=None, qk_scale=None, eps=0.0) -> None:
    """The scalar options of a sequence call, checked alike by every backend (those without chunks ignore
    ``chunk_size`` but refuse a bad one): chunk_size None or an int >= 1, qk_scale None or a finite number,
    eps a finite number >= 0."""
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral) or chunk_size < 1
    ):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    if qk_scale is not None and not _finite_number(qk_scale):
        raise ValueError(f"qk_scale must be a finite number or None, got {qk_scale!r}")
    if not _finite_number(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")


def _finite_number(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def initial_states(dims: Dims, c_initial=None, n_initial=None, m_initial=None):
    """Fills missing initial states with zeros (m_0 = 0); returns fp32 (c, n, m)."""
    return initial_states_in(jnp.float32, dims, c_initial, n_initial, m_initial)


def initial_states_in(dtype, dims: Dims, c_initial=None, n_initial=None, m_initial=None):
    """Like :func:`initial_states`, in ``dtype`` (the backends' ``compute_dtype``: fp32, or fp64)."""
    B, NH, _, DHQK, DHV = dims
    c = jnp.zeros((B, NH, DHQK, DHV), dtype) if c_initial is None else c_initial.astype(dtype)
    n = jnp.zeros((B, NH, DHQK), dtype) if n_initial is None else n_initial.astype(dtype)
    m = jnp.zeros((B, NH), dtype) if m_initial is None else m_initial.astype(dtype)
    return c, n, m


def default_chunk_size(S: int) -> int:
    """LONG_CHUNK for S >= LONG_SEQUENCE, else min(SHORT_CHUNK, S rounded up to a power of two >= MIN_CHUNK)."""
    if S >= LONG_SEQUENCE:
        return LONG_CHUNK
    return min(SHORT_CHUNK, max(MIN_CHUNK, 1 << (S - 1).bit_length()))


def padded_length(S: int, multiple: int) -> int:
    """S rounded up to a multiple of ``multiple``."""
    return -(-S // multiple) * multiple


def pad_sequence(q, k, v, i, f, multiple: int):
    """Pads the time axis to a multiple of ``multiple`` with steps that leave the state unchanged.

    Gates come back in at least fp32 (finite pad values keep gradients finite). Returns the padded
    (q, k, v, i, f) and the original length S.
    """
    gate_dtype = jnp.promote_types(i.dtype, jnp.float32)
    i, f = i.astype(gate_dtype), f.astype(gate_dtype)
    S = q.shape[2]
    pad = padded_length(S, multiple) - S
    if pad == 0:
        return (q, k, v, i, f), S
    pad4 = ((0, 0), (0, 0), (0, pad), (0, 0))
    pad3 = ((0, 0), (0, 0), (0, pad))
    return (
        jnp.pad(q, pad4),
        jnp.pad(k, pad4),
        jnp.pad(v, pad4),
        jnp.pad(i, pad3, constant_values=PAD_IGATE),
        jnp.pad(f, pad3, constant_values=PAD_FGATE),
    ), S


def default_qk_scale(dhqk: int, qk_scale: float | None) -> float:
    return dhqk**-0.5 if qk_scale is None else float(qk_scale)


def log_sigmoid_fp32(f: jax.Array) -> jax.Array:
    """log(sigmoid(f)) in at least fp32 (fp64 stays fp64)."""
    return jax.nn.log_sigmoid(f.astype(jnp.promote_types(f.dtype, jnp.float32)))


def denominator_floor(m: jax.Array) -> jax.Array:
    """exp(-m), the floor of the normaliser ``max(|n . s q|, exp(-m))``, with the exponent capped one below
    the largest finite one of m's dtype (87.7 for fp32, so a floor above 1.2e38 is held there). Where it would
    overflow, the normaliser is >= 1e38 either way and h rounds to 0; the cap keeps the autodiff backward
    finite there (inf x 0 = NaN before, e.g. with input gates of -95 and forget gates of -10 from the first
    step). m: any shape, fp32 or fp64; returns the same shape and dtype."""
    return jnp.exp(jnp.minimum(-m, float(np.log(np.finfo(m.dtype).max)) - 1.0))


def compute_dtype(dtype) -> jnp.dtype:
    """Dtype of gate and state math: fp32 for fp32/bf16/fp16 inputs, fp64 for fp64 inputs."""
    return jnp.promote_types(dtype, jnp.float32)


def mixed_einsum(subscripts: str, a: jax.Array, b: jax.Array, operand_dtype, out_dtype=None) -> jax.Array:
    """``einsum`` of ``a`` and ``b`` cast to ``operand_dtype``, accumulated in ``compute_dtype``.

    bf16/fp16 operands run on tensor cores with fp32 accumulation; fp32/fp64 operands run at full
    precision (no TF32 on GPU), so fp32 backends stay usable as oracles. The result is in the
    accumulation dtype, or rounded once to ``out_dtype`` when given.
    """
    acc = compute_dtype(operand_dtype)
    precision = lax.Precision.HIGHEST if acc == operand_dtype else lax.Precision.DEFAULT
    return jnp.einsum(
        subscripts,
        a.astype(operand_dtype),
        b.astype(operand_dtype),
        preferred_element_type=out_dtype or acc,
        precision=precision,
    )


def check_step_inputs(q, k, v, i, f, c, n, m) -> Dims:
    """Validates one recurrent step: q, k (B, NH, DHQK), v (B, NH, DHV), i, f (B, NH),
    c (B, NH, DHQK, DHV), n (B, NH, DHQK), m (B, NH). Returns its dims with S = 1."""
    arrays = (("q", q, 3), ("k", k, 3), ("v", v, 3), ("i", i, 2), ("f", f, 2), ("c", c, 4), ("n", n, 3), ("m", m, 2))
    for name, x, rank in arrays:
        _check_rank_and_dtype(name, x, rank)
    B, NH, DHQK = q.shape
    DHV = v.shape[-1]
    expected = {
        "k": (B, NH, DHQK),
        "v": (B, NH, DHV),
        "i": (B, NH),
        "f": (B, NH),
        "c": (B, NH, DHQK, DHV),
        "n": (B, NH, DHQK),
        "m": (B, NH),
    }
    for name, x, _ in arrays[1:]:
        if tuple(x.shape) != expected[name]:
            raise _shape_error(name, x.shape, f"{expected[name]}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    return Dims(B, NH, 1, DHQK, DHV)


def segment_resets(segment_ids, dims: Dims) -> jax.Array | None:
    """Checks ``segment_ids`` (B, S) int (None = one segment) and returns where a new segment starts:
    (B, S) bool, ``resets[:, t] = segment_ids[:, t] != segment_ids[:, t-1]`` for t >= 1, False at t = 0
    (an initial state applies to the first segment). None stays None."""
    if segment_ids is None:
        return None
    segment_ids = jnp.asarray(segment_ids)
    if tuple(segment_ids.shape) != (dims.B, dims.S):
        raise _shape_error("segment_ids", segment_ids.shape, f"(B, S) = {(dims.B, dims.S)}")
    if not jnp.issubdtype(segment_ids.dtype, jnp.integer):
        raise ValueError(f"segment_ids must be an integer array, got dtype {segment_ids.dtype}")
    changed = segment_ids[:, 1:] != segment_ids[:, :-1]
    return jnp.concatenate([jnp.zeros_like(changed[:, :1]), changed], axis=1)


def pad_resets(resets: jax.Array | None, length: int) -> jax.Array | None:
    """(B, S) resets padded with False to (B, length): padding steps continue the last segment."""
    if resets is None or resets.shape[1] == length:
        return resets
    return jnp.pad(resets, ((0, 0), (0, length - resets.shape[1])))


def _segmented_scan(op, x: jax.Array, resets: jax.Array) -> jax.Array:
    """Inclusive scan of ``op`` over the last axis restarting at every ``resets`` position (broadcast to x)."""
    resets = jnp.broadcast_to(resets, x.shape)

    def combine(left, right):
        return jnp.where(right[1], right[0], op(left[0], right[0])), left[1] | right[1]

    return lax.associative_scan(combine, (x, resets), axis=x.ndim - 1)[0]


def segmented_cumsum(x: jax.Array, resets: jax.Array) -> jax.Array:
    """Inclusive cumulative sum over the last axis that restarts at every ``resets`` position
    (``out[t] = x[t]`` there); ``resets`` broadcasts to ``x``. Only steps of one segment are ever
    added, so no sum spans a reset."""
    return _segmented_scan(jnp.add, x, resets)


def segmented_cummax(x: jax.Array, resets: jax.Array) -> jax.Array:
    """Inclusive cumulative max over the last axis, restarting at every ``resets`` position."""
    return _segmented_scan(jnp.maximum, x, resets)


def segment_sums(x: jax.Array) -> jax.Array:
    """``out[..., t, j] = sum_{l=j+1}^{t} x[..., l]`` for j <= t (0 on the diagonal), ``-inf`` above it.

    (..., T) -> (..., T, T). Each entry is summed from l = j + 1 on, never taken as the difference of
    two long cumulative sums, so log decays over long spans keep their precision.
    """
    T = x.shape[-1]
    t = jnp.arange(T)[:, None]
    j = jnp.arange(T)[None, :]
    sums = jnp.cumsum(jnp.where(t > j, x[..., :, None], 0), axis=-2)
    return jnp.where(t >= j, sums, -jnp.inf)
