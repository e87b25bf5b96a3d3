"""``recurrent--jax``: a ``lax.scan`` of :func:`mlstm_step` over the time steps (O(1) state memory)."""
from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from ..common import check_inputs, compute_dtype, default_qk_scale, initial_states_in
from .step import mlstm_step


def mlstm_recurrent(
    q, k, v, i, f, *, c_initial=None, n_initial=None, m_initial=None,
    return_last_states=False, qk_scale=None, eps=1e-6, chunk_size=None,
):
    """mLSTM over a sequence, one step at a time.

    Shapes and returns: see ``xlstm_flax.kernels``. ``chunk_size`` is unused (uniform signature).
    """
    dims = check_inputs(q, k, v, i, f, c_initial, n_initial, m_initial)
    state = initial_states_in(compute_dtype(q.dtype), dims, c_initial, n_initial, m_initial)
    qk_scale = default_qk_scale(dims.DHQK, qk_scale)

    def step(state, inputs):
        h, state = mlstm_step(*inputs, *state, qk_scale=qk_scale, eps=eps)
        return state, h

    state, h = lax.scan(step, state, tuple(jnp.moveaxis(x, 2, 0) for x in (q, k, v, i, f)))
    h = jnp.moveaxis(h, 0, 2)
    return (h, state) if return_last_states else h
