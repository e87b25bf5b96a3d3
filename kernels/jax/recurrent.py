"""``recurrent--jax``: a ``lax.scan`` of :func:`mlstm_step` over the time steps (O(1) state memory)."""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from ..common import (
    check_inputs,
    check_options,
    compute_dtype,
    default_qk_scale,
    initial_states_in,
    segment_resets,
)
from .step import mlstm_step


def mlstm_recurrent(
    q,
    k,
    v,
    i,
    f,
    *,
    c_initial=None,
    n_initial=None,
    m_initial=None,
    return_last_states=False,
    qk_scale=None,
    eps=1e-6,
    chunk_size=None,
    segment_ids=None,
):
    """mLSTM over a sequence, one step at a time.

    Shapes and returns: see ``xlstm_flax.kernels``. ``chunk_size`` is unused (uniform signature, checked).
    ``segment_ids`` (B, S) int: the state restarts from zero (m = 0) where the id changes.
    """
    dims = check_inputs(q, k, v, i, f, c_initial, n_initial, m_initial)
    check_options(chunk_size, qk_scale, eps)
    resets = segment_resets(segment_ids, dims)
    resets = jnp.zeros((dims.B, dims.S), bool) if resets is None else resets
    state = initial_states_in(compute_dtype(q.dtype), dims, c_initial, n_initial, m_initial)
    qk_scale = default_qk_scale(dims.DHQK, qk_scale)

    def step(state, inputs):
        *inputs, reset = inputs
        state = tuple(jnp.where(reset.reshape(-1, *(1,) * (x.ndim - 1)), 0.0, x).astype(x.dtype) for x in state)
        h, state = mlstm_step(*inputs, *state, qk_scale=qk_scale, eps=eps)
        return state, h

    xs = (*(jnp.moveaxis(x, 2, 0) for x in (q, k, v, i, f)), resets.T)
    state, h = lax.scan(step, state, xs)
    h = jnp.moveaxis(h, 0, 2)
    return (h, state) if return_last_states else h
