"""Shared input checks and helpers for every mLSTM backend (pure JAX, Triton).

Shapes: q, k (B, NH, S, DHQK); v (B, NH, S, DHV); i, f (B, NH, S);
c (B, NH, DHQK, DHV); n (B, NH, DHQK); m (B, NH).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

FLOAT_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16, jnp.float64)
# Padding steps leave the state untouched: exp(i) = 0 and sigmoid(f) = 1 (log_sigmoid(f) = 0 in fp32).
PAD_IGATE = -1e30
PAD_FGATE = 1e30


class Dims(NamedTuple):
    B: int
    NH: int
    S: int
    DHQK: int
    DHV: int


def _shape_error(name: str, got, expected: str) -> ValueError:
    return ValueError(f"{name} has shape {tuple(got)}, expected {expected}")


def check_inputs(q, k, v, i, f, c_initial=None, n_initial=None, m_initial=None) -> Dims:
    """Validates ranks, shapes and dtypes of a sequence call; returns its dims."""
    for name, x, rank in (("q", q, 4), ("k", k, 4), ("v", v, 4), ("i", i, 3), ("f", f, 3)):
        if x.ndim != rank:
            raise ValueError(f"{name} must have rank {rank}, got shape {tuple(x.shape)}")
        if not any(x.dtype == d for d in FLOAT_DTYPES):
            raise ValueError(f"{name} must be a float array (fp32/bf16/fp16/fp64), got dtype {x.dtype}")
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


def initial_states(dims: Dims, c_initial=None, n_initial=None, m_initial=None):
    """Fills missing initial states with zeros (m_0 = 0); returns fp32 (c, n, m)."""
    B, NH, _, DHQK, DHV = dims
    c = jnp.zeros((B, NH, DHQK, DHV), jnp.float32) if c_initial is None else c_initial.astype(jnp.float32)
    n = jnp.zeros((B, NH, DHQK), jnp.float32) if n_initial is None else n_initial.astype(jnp.float32)
    m = jnp.zeros((B, NH), jnp.float32) if m_initial is None else m_initial.astype(jnp.float32)
    return c, n, m


def pad_sequence(q, k, v, i, f, multiple: int):
    """Pads the time axis to a multiple of ``multiple`` with steps that leave the state unchanged.

    Gates come back in at least fp32 (finite pad values keep gradients finite). Returns the padded
    (q, k, v, i, f) and the original length S.
    """
    gate_dtype = jnp.promote_types(i.dtype, jnp.float32)
    i, f = i.astype(gate_dtype), f.astype(gate_dtype)
    S = q.shape[2]
    pad = (-S) % multiple
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
