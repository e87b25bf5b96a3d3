"""``chunkwise--jax``: states at chunk boundaries, the quadratic form only inside each chunk.

With chunk length L and NC = S / L chunks (S padded to a multiple of L), per batch and head:
1. a ``lax.scan`` over chunks carries the stabilised state (C, n, m) from chunk to chunk, one
   (DHQK x L) @ (L x DHV) matmul per chunk, and emits the state entering every chunk;
2. all chunks at once: ``h_i = sum_{j<=i} P_ij v_j + r_i (s q_i)^T C_k``, each row divided by its
   denominator before the matmuls (so they write h directly), where within chunk k with ``b`` the
   inclusive cumulative log forget gate and ``m_k`` the stabiliser entering the chunk:
   ``m_i = max(b_i + m_k, max_{j<=i}(b_i - b_j + i_j))`` (the step recurrence's m_t, exactly),
   ``P_ij = (s q_i . k_j) exp(b_i - b_j + i_j - m_i)``, ``r_i = exp(b_i + m_k - m_i)``.
Memory: O(S (DHQK + DHV) + S L + NC DHQK DHV); no S x S matrix. Backward: JAX autodiff.
"""
from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from ..common import (
    check_inputs, compute_dtype, default_qk_scale, initial_states_in, log_sigmoid_fp32, mixed_einsum,
    pad_sequence,
)

DEFAULT_CHUNK_SIZE = 64


def mlstm_chunkwise(
    q, k, v, i, f, *, c_initial=None, n_initial=None, m_initial=None,
    return_last_states=False, qk_scale=None, eps=1e-6, chunk_size=DEFAULT_CHUNK_SIZE,
):
    """mLSTM over a sequence, chunk by chunk (any S: padded to a multiple of ``min(chunk_size, S)``).

    q, k: (B, NH, S, DHQK); v: (B, NH, S, DHV); i, f: (B, NH, S); optional initial states
    c (B, NH, DHQK, DHV), n (B, NH, DHQK), m (B, NH). Returns h (B, NH, S, DHV) in q's dtype, or
    ``(h, (c, n, m))`` with fp32 states (fp64 for fp64 q) when ``return_last_states``.
    """
    dims = check_inputs(q, k, v, i, f, c_initial, n_initial, m_initial)
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    dtype = compute_dtype(q.dtype)
    state0 = initial_states_in(dtype, dims, c_initial, n_initial, m_initial)
    scale = default_qk_scale(dims.DHQK, qk_scale)
    L = min(chunk_size, dims.S)
    (q, k, v, i, f), _ = pad_sequence(q, k, v, i, f, L)
    NC = q.shape[2] // L

    def chunked(x):  # (B, NH, NC * L, ...) -> (B, NH, NC, L, ...)
        return x.reshape(dims.B, dims.NH, NC, L, *x.shape[3:])

    q, k, v = chunked(q), chunked(k), chunked(v)
    i = chunked(i).astype(dtype)
    b = jnp.cumsum(log_sigmoid_fp32(chunked(f)).astype(dtype), axis=-1)  # (B, NH, NC, L)

    (c_k, n_k, m_k), last_state = _chunk_states(k, v, i, b, state0)
    h = _chunk_outputs(q, k, v, i, b, c_k, n_k, m_k, scale, eps)
    h = h.reshape(dims.B, dims.NH, NC * L, dims.DHV)[:, :, : dims.S].astype(q.dtype)
    return (h, last_state) if return_last_states else h


def _chunk_states(k, v, i, b, state0):
    """Scans the chunks; returns the states entering every chunk and the final state.

    k: (B, NH, NC, L, DHQK), v: (B, NH, NC, L, DHV), i, b: (B, NH, NC, L).
    Returns ``(c_k (NC, B, NH, DHQK, DHV) in k's dtype, n_k (NC, B, NH, DHQK), m_k (NC, B, NH))``
    and the last ``(c, n, m)``.
    """
    g = b[..., -1]  # (B, NH, NC) total log forget gate of each chunk
    a = i + g[..., None] - b  # log weight of step j in its chunk-end state

    def step(state, chunk):
        c, n, m = state
        k_c, v_c, a_c, g_c = chunk
        m_new = jnp.maximum(g_c + m, jnp.max(a_c, axis=-1))
        decay = jnp.exp(g_c + m - m_new)
        k_w = k_c * jnp.exp(a_c - m_new[..., None])[..., None]  # (B, NH, L, DHQK)
        c_new = decay[..., None, None] * c + mixed_einsum("bhld,bhlv->bhdv", k_w, v_c, k_c.dtype)
        n_new = decay[..., None] * n + jnp.sum(k_w, axis=-2)
        return (c_new, n_new, m_new), (c.astype(k_c.dtype), n, m)

    chunks = tuple(jnp.moveaxis(x, 2, 0) for x in (k, v, a, g))
    last_state, starts = lax.scan(step, state0, chunks)
    return starts, last_state


def _chunk_outputs(q, k, v, i, b, c_k, n_k, m_k, scale, eps):
    """h for all chunks at once (B, NH, NC, L, DHV), accumulated in fp32 (fp64 for fp64 q)."""
    m_k = jnp.moveaxis(m_k, 0, 2)[..., None]  # (B, NH, NC, 1)
    m = jnp.maximum(b + m_k, b + lax.cummax(i - b, axis=b.ndim - 1))  # (B, NH, NC, L)
    L = b.shape[-1]
    causal = jnp.tril(jnp.ones((L, L), bool))
    log_w = jnp.where(causal, b[..., :, None] - b[..., None, :] + i[..., None, :] - m[..., None], -jnp.inf)
    p = mixed_einsum("bhcid,bhcjd->bhcij", q, k, q.dtype) * (scale * jnp.exp(log_w))
    r = scale * jnp.exp(b + m_k - m)  # (B, NH, NC, L)
    nq = jnp.sum(p, axis=-1) + r * mixed_einsum("bhcid,cbhd->bhci", q, n_k, m.dtype)
    inv_den = 1.0 / (jnp.maximum(jnp.abs(nq), jnp.exp(-m)) + eps)
    return mixed_einsum("bhcij,bhcjv->bhciv", p * inv_den[..., None], v, q.dtype) + mixed_einsum(
        "bhcid,cbhdv->bhciv", q * (r * inv_den)[..., None], c_k, q.dtype
    )
