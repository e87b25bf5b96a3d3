"""``parallel--jax``: the quadratic stabilised form (an S x S gate matrix per head), any S."""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from ..common import (
    check_inputs,
    check_options,
    compute_dtype,
    default_qk_scale,
    denominator_floor,
    initial_states_in,
    log_sigmoid_fp32,
    mixed_einsum,
    segment_resets,
    segment_sums,
)


def mlstm_parallel(
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
    """mLSTM over a sequence in the quadratic form (memory O(S^2) per head).

    Shapes and returns: see ``xlstm_flax.kernels``. ``chunk_size`` is unused (uniform signature, checked).
    ``segment_ids`` (B, S) int: the state restarts from zero (m = 0) where the id changes.
    """
    dims = check_inputs(q, k, v, i, f, c_initial, n_initial, m_initial)
    check_options(chunk_size, qk_scale, eps)
    resets = segment_resets(segment_ids, dims)
    dtype = compute_dtype(q.dtype)
    c0, n0, m0 = initial_states_in(dtype, dims, c_initial, n_initial, m_initial)
    scale = default_qk_scale(dims.DHQK, qk_scale)
    logf = log_sigmoid_fp32(f).astype(dtype)

    # column c of row t: the state before step c (c = 0: the initial state; c = j + 1: token j), with
    # log weight sum_{l=c}^{t} logf_l plus m_0 (column 0) or i_j (token j)
    log_w = segment_sums(jnp.concatenate([jnp.zeros_like(logf[..., :1]), logf], axis=-1))[..., 1:, :]
    offsets = jnp.concatenate([m0[..., None], i.astype(dtype)], axis=-1)[..., None, :]
    if resets is None:
        log_w = log_w + offsets
    else:  # row t sees only columns from its segment's start on; the start column of a later segment is
        # the restarted zero state (m = 0, no token)
        column = jnp.arange(dims.S + 1)
        start = lax.cummax(jnp.where(resets, jnp.arange(dims.S), 0), axis=1)[:, None, :, None]  # (B, 1, S, 1)
        offsets = jnp.where((column == start) & (column > 0), 0.0, offsets)
        log_w = jnp.where(column >= start, log_w + offsets, -jnp.inf)
    m = jnp.max(log_w, axis=-1)  # (B, NH, S) the stabiliser m_t
    w = jnp.exp(log_w - m[..., None])  # (B, NH, S, S + 1)
    w_tokens = w[..., 1:] if resets is None else jnp.where(column[1:] > start, w[..., 1:], 0.0)

    p = mixed_einsum("bhtd,bhjd->bhtj", q, k, q.dtype) * (scale * w_tokens)
    w0 = scale * w[..., 0]  # (B, NH, S)
    nq = jnp.sum(p, axis=-1) + w0 * mixed_einsum("bhtd,bhd->bht", q, n0, dtype)
    inv_den = 1.0 / (jnp.maximum(jnp.abs(nq), denominator_floor(m)) + eps)
    h = mixed_einsum("bhtj,bhjv->bhtv", p * inv_den[..., None], v, q.dtype) + mixed_einsum(
        "bhtd,bhdv->bhtv", q * (w0 * inv_den)[..., None], c0, q.dtype
    )
    if not return_last_states:
        return h.astype(q.dtype)

    w_last = w_tokens[..., -1, :]  # (B, NH, S): weights of the tokens in the last state
    c_last = w[..., -1, 0, None, None] * c0 + mixed_einsum("bhjd,bhjv->bhdv", k * w_last[..., None], v, q.dtype)
    n_last = w[..., -1, 0, None] * n0 + jnp.einsum("bhj,bhjd->bhd", w_last, k.astype(dtype))
    return h.astype(q.dtype), (c_last, n_last, m[..., -1])
