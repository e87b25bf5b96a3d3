"""Input checks and initial states shared by every sLSTM backend (calling convention in ``__init__``)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

NUM_GATES = 4  # i, f, z, o, in this order along the gate axis
M_INITIAL = -1e30  # the stabiliser before the first token: the first step sets m_1 = i_1, n_1 = 1
BIAS_DTYPES = (jnp.float32, jnp.float64)  # float64 only for reference computations
RECURRENT_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16, jnp.float64)


class Dims(NamedTuple):
    B: int
    S: int
    NH: int
    DH: int


class GateInputs(NamedTuple):
    """The gates' input projections, each (B, S, NH, DH) (one float dtype): i, f, z, o."""

    i: jax.Array
    f: jax.Array
    z: jax.Array
    o: jax.Array


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


def gate_preactivations(gates: GateInputs, bias: jax.Array) -> jax.Array:
    """The input parts of the gate pre-activations, ``gate + bias`` in (at least) fp32: gates (..., NH, DH)
    each, bias (4, NH, DH) -> (..., 4, NH, DH)."""
    wide = jnp.promote_types(bias.dtype, jnp.float32)
    return jnp.stack([g.astype(wide) for g in gates], axis=-3) + bias.astype(wide)


def check_inputs(name: str, gates, bias, recurrent_kernel, initial) -> tuple[Dims, GateInputs, States]:
    """Checks shapes and dtypes (ValueError naming the kernel and the input); returns the dims, the gates
    as :class:`GateInputs` and the initial states in the bias's dtype (defaults from
    :func:`initial_states` where ``initial`` is None)."""
    if not isinstance(gates, (tuple, list)) or len(gates) != NUM_GATES:
        raise ValueError(f"{name}: gates must be {NUM_GATES} arrays (i, f, z, o), got {type(gates).__name__}")
    gates = GateInputs(*gates)
    shape, dtype = gates.i.shape, gates.i.dtype
    for field, gate in zip(GateInputs._fields, gates):
        if gate.ndim != 4 or gate.shape != shape:
            raise ValueError(
                f"{name}: gate inputs must be (B, S, NH, DH) arrays of one shape, got {field} {gate.shape} (i {shape})"
            )
        if gate.dtype != dtype or not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(f"{name}: gate inputs must share one float dtype, got {field} {gate.dtype} (i {dtype})")
    B, S, NH, DH = shape
    if S < 1:
        raise ValueError(f"{name}: gate inputs must hold at least one time step, got shape {shape}")
    if bias.shape != (NUM_GATES, NH, DH):
        raise ValueError(f"{name}: bias must be {(NUM_GATES, NH, DH)} for gate inputs {shape}, got {bias.shape}")
    if not any(bias.dtype == d for d in BIAS_DTYPES):
        raise ValueError(f"{name}: bias must be float32 (float64 for references), got {bias.dtype}")
    if recurrent_kernel.shape != (NUM_GATES, NH, DH, DH):
        raise ValueError(
            f"{name}: recurrent_kernel must be {(NUM_GATES, NH, DH, DH)} for gate inputs {shape}, "
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
    return Dims(B, S, NH, DH), gates, States(*(s.astype(bias.dtype) for s in initial))
