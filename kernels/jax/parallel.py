"""``parallel--jax``: the quadratic stabilised form (an S x S gate matrix per head), any S."""
from __future__ import annotations

import jax.numpy as jnp

from ..common import (
    check_inputs, compute_dtype, default_qk_scale, initial_states_in, log_sigmoid_fp32, mixed_einsum,
    segment_sums,
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
    logf = log_sigmoid_fp32(f).astype(dtype)

    # log weight of the initial state (column 0) and of token j (column j + 1) in the state at step t
    log_w = segment_sums(jnp.concatenate([jnp.zeros_like(logf[..., :1]), logf], axis=-1))[..., 1:, :]
    log_w = log_w + jnp.concatenate([m0[..., None], i.astype(dtype)], axis=-1)[..., None, :]
    m = jnp.max(log_w, axis=-1)  # (B, NH, S) the stabiliser m_t
    w = jnp.exp(log_w - m[..., None])  # (B, NH, S, S + 1)

    p = mixed_einsum("bhtd,bhjd->bhtj", q, k, q.dtype) * (scale * w[..., 1:])
    w0 = scale * w[..., 0]  # (B, NH, S)
    nq = jnp.sum(p, axis=-1) + w0 * mixed_einsum("bhtd,bhd->bht", q, n0, dtype)
    inv_den = 1.0 / (jnp.maximum(jnp.abs(nq), jnp.exp(-m)) + eps)
    h = mixed_einsum("bhtj,bhjv->bhtv", p * inv_den[..., None], v, q.dtype) + mixed_einsum(
        "bhtd,bhdv->bhtv", q * (w0 * inv_den)[..., None], c0, q.dtype
    )
    if not return_last_states:
        return h.astype(q.dtype)

    w_last = w[..., -1, :]  # (B, NH, S + 1): weights in the last state
    c_last = w_last[..., 0, None, None] * c0 + mixed_einsum(
        "bhjd,bhjv->bhdv", k * w_last[..., 1:, None], v, q.dtype)
    n_last = w_last[..., 0, None] * n0 + jnp.einsum("bhj,bhjd->bhd", w_last[..., 1:], k.astype(dtype))
    return h.astype(q.dtype), (c_last, n_last, m[..., -1])
