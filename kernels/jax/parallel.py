"""``parallel--jax``: the quadratic stabilised form (an S x S gate matrix per head), any S."""
from __future__ import annotations

import jax.numpy as jnp

from ..common import (
    check_inputs, compute_dtype, default_qk_scale, initial_states_in, log_sigmoid_fp32, mixed_einsum,
)


def mlstm_parallel(
    q, k, v, i, f, *, c_initial=None, n_initial=None, m_initial=None,
    return_last_states=False, qk_scale=None, eps=1e-6, chunk_size=None,
):
    """mLSTM over a sequence in the quadratic form (memory O(S^2) per head).

    Shapes and returns: see ``xlstm_flax.kernels``. ``chunk_size`` is unused (uniform signature).
    """
    dims = check_inputs(q, k, v, i, f, c_initial, n_initial, m_initial)
    dtype = compute_dtype(q.dtype)
    c0, n0, m0 = initial_states_in(dtype, dims, c_initial, n_initial, m_initial)
    scale = default_qk_scale(dims.DHQK, qk_scale)
    i = i.astype(dtype)
    cum_logf = jnp.cumsum(log_sigmoid_fp32(f).astype(dtype), axis=-1)  # (B, NH, S)

    # log weight of token j in the (unnormalised) state at time t, and of the initial state
    causal = jnp.tril(jnp.ones((dims.S, dims.S), bool))
    log_w = jnp.where(causal, cum_logf[..., :, None] - cum_logf[..., None, :] + i[..., None, :], -jnp.inf)
    log_w0 = cum_logf + m0[..., None]
    m = jnp.maximum(log_w0, jnp.max(log_w, axis=-1))  # (B, NH, S) the stabiliser m_t

    p = mixed_einsum("bhtd,bhjd->bhtj", q, k, q.dtype) * (scale * jnp.exp(log_w - m[..., None]))
    w0 = scale * jnp.exp(log_w0 - m)  # (B, NH, S)
    nq = jnp.sum(p, axis=-1) + w0 * mixed_einsum("bhtd,bhd->bht", q, n0, dtype)
    inv_den = 1.0 / (jnp.maximum(jnp.abs(nq), jnp.exp(-m)) + eps)
    h = mixed_einsum("bhtj,bhjv->bhtv", p * inv_den[..., None], v, q.dtype) + mixed_einsum(
        "bhtd,bhdv->bhtv", q * (w0 * inv_den)[..., None], c0, q.dtype
    )
    if not return_last_states:
        return h.astype(q.dtype)

    m_last = m[..., -1]
    w_last = jnp.exp(cum_logf[..., -1:] - cum_logf + i - m_last[..., None])  # (B, NH, S)
    decay0 = jnp.exp(cum_logf[..., -1] + m0 - m_last)
    c_last = decay0[..., None, None] * c0 + mixed_einsum("bhjd,bhjv->bhdv", k * w_last[..., None], v, q.dtype)
    n_last = decay0[..., None] * n0 + jnp.sum(k.astype(dtype) * w_last[..., None], axis=-2)
    return h.astype(q.dtype), (c_last, n_last, m_last)
