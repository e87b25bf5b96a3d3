"""Input checks and initial states shared by every sLSTM backend (calling convention in ``__init__``)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

NUM_GATES = 4  # i, f, z, o, in this order along the gate axis
M_INITIAL = -1e30  # the stabiliser before the first token: the first step sets m_1 = i_1, n_1 = 1
PRE_DTYPES = (jnp.float32, jnp.float64)  # float64 only for reference computations
RECURRENT_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16, jnp.float64)


class Dims(NamedTuple):
    B: int
    S: int
    NH: int
    DH: int


class States(NamedTuple):
    """sLSTM cell state, each (B, NH, DH) fp32."""

    c: jax.Array
    n: jax.Array
    m: jax.Array
    h: jax.Array


def initial_states(B: int, NH: int, DH: int) -> States:
    """Zeros for c, n, h and ``M_INITIAL`` for m."""
    zeros = jnp.zeros((B, NH, DH), jnp.float32)
    return States(zeros, zeros, jnp.full_like(zeros, M_INITIAL), zeros)


def check_inputs(name: str, pre, recurrent_kernel, initial) -> tuple[Dims, States]:
    """Checks shapes and dtypes (ValueError naming the kernel and the input); returns the dims and the
    initial states in pre's dtype (defaults from :func:`initial_states` where ``initial`` is None)."""
    if pre.ndim != 5 or pre.shape[2] != NUM_GATES:
        raise ValueError(f"{name}: pre must be (B, S, {NUM_GATES}, NH, DH), got shape {pre.shape}")
    if not any(pre.dtype == d for d in PRE_DTYPES):
        raise ValueError(f"{name}: pre must be float32 (float64 for references), got {pre.dtype}")
    B, S, _, NH, DH = pre.shape
    if S < 1:
        raise ValueError(f"{name}: pre must hold at least one time step, got shape {pre.shape}")
    if recurrent_kernel.shape != (NUM_GATES, NH, DH, DH):
        raise ValueError(
            f"{name}: recurrent_kernel must be {(NUM_GATES, NH, DH, DH)} for pre {pre.shape}, "
            f"got {recurrent_kernel.shape}"
        )
    if not any(recurrent_kernel.dtype == d for d in RECURRENT_DTYPES):
        raise ValueError(f"{name}: recurrent_kernel must be a float type, got {recurrent_kernel.dtype}")
    if initial is None:
        initial = initial_states(B, NH, DH)
    initial = States(*initial)
    for field, state in zip(States._fields, initial):
        if state.shape != (B, NH, DH):
            raise ValueError(f"{name}: initial state {field} must be {(B, NH, DH)}, got {state.shape}")
    return Dims(B, S, NH, DH), States(*(s.astype(pre.dtype) for s in initial))
