"""Float64 reference for the mLSTM recurrence (docs/math.md), written independently of the
backends: the unstabilised quadratic form, with the stabiliser m_t only for eps and the returned
(stabilised) states. Differentiable with jax (call under ``jax.enable_x64()``). With ``segment_ids``
(B, S) int, every segment (where the id changes) starts from the zero state with m = 0; the initial
state belongs to the first segment.

Shapes: q, k (B, NH, S, DHQK); v (B, NH, S, DHV); i, f (B, NH, S).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def mlstm_reference(q, k, v, i, f, c0=None, n0=None, m0=None, qk_scale=None, eps=1e-6, segment_ids=None):
    """Returns h (B, NH, S, DHV), den (B, NH, S), m (B, NH, S), (c_S, n_S, m_S), all float64."""
    q, k, v, i, f = (jnp.asarray(x, jnp.float64) for x in (q, k, v, i, f))
    B, NH, S, DHQK = q.shape
    DHV = v.shape[-1]
    s = DHQK**-0.5 if qk_scale is None else qk_scale
    c0 = jnp.zeros((B, NH, DHQK, DHV)) if c0 is None else jnp.asarray(c0, jnp.float64)
    n0 = jnp.zeros((B, NH, DHQK)) if n0 is None else jnp.asarray(n0, jnp.float64)
    m0 = jnp.zeros((B, NH)) if m0 is None else jnp.asarray(m0, jnp.float64)

    F = jnp.cumsum(jax.nn.log_sigmoid(f), axis=-1)  # (B, NH, S) log of the total decay up to t
    # segment number of every step and the F just before its segment's start (float64: differences are exact enough)
    ids = np.zeros((B, S), np.int64) if segment_ids is None else np.asarray(segment_ids)
    resets = np.concatenate([np.zeros((B, 1), bool), ids[:, 1:] != ids[:, :-1]], axis=1)
    seg = np.cumsum(resets, axis=1)
    start = np.maximum.accumulate(np.where(resets, np.arange(S), 0), axis=1)  # first step of t's segment
    F_at_start = jnp.take_along_axis(F, np.maximum(start - 1, 0)[:, None, :], axis=-1)
    F_before = jnp.where((start > 0)[:, None], F_at_start, 0.0)
    first = (seg == 0)[:, None, :]  # (B, 1, S) steps that see the initial state
    pairs = np.tril(np.ones((S, S), bool)) & (seg[:, :, None] == seg[:, None, :])[:, None]
    log_d = jnp.where(pairs, F[..., :, None] - F[..., None, :] + i[..., None, :], -jnp.inf)
    m = jnp.maximum(jnp.where(first, m0[..., None], 0.0) + F - F_before, jnp.max(log_d, axis=-1))  # (B, NH, S)

    sq = s * q
    decay = jnp.exp(log_d) * jnp.einsum("bhtd,bhjd->bhtj", sq, k)
    c0_tilde = jnp.exp(m0)[..., None, None] * c0
    n0_tilde = jnp.exp(m0)[..., None] * n0
    init_w = jnp.where(first, jnp.exp(F), 0.0)  # weight of the initial state at step t
    num_t = jnp.einsum("bhtj,bhjv->bhtv", decay, v) + init_w[..., None] * jnp.einsum("bhtd,bhdv->bhtv", sq, c0_tilde)
    nq_t = decay.sum(-1) + init_w * jnp.einsum("bhtd,bhd->bht", sq, n0_tilde)
    den_t = jnp.maximum(jnp.abs(nq_t), 1.0)  # unstabilised denominator
    h = num_t / (den_t + eps * jnp.exp(m))[..., None]

    in_last = (seg == seg[:, -1:])[:, None, :]  # (B, 1, S) steps of the last segment
    w_last = jnp.exp(jnp.where(in_last, F[..., -1:] - F + i, -jnp.inf))  # (B, NH, S) weight of step j in the last state
    m_last = m[..., -1]
    scale = jnp.exp(-m_last)
    c_last = scale[..., None, None] * (
        jnp.einsum("bhj,bhjd,bhjv->bhdv", w_last, k, v) + init_w[..., -1, None, None] * c0_tilde
    )
    n_last = scale[..., None] * (jnp.einsum("bhj,bhjd->bhd", w_last, k) + init_w[..., -1, None] * n0_tilde)
    return h, jnp.exp(-m) * den_t, m, (c_last, n_last, m_last)


def random_inputs(key, B=2, NH=2, S=37, DHQK=24, DHV=40, dtype=jnp.float32, with_states=False):
    """Fresh random q, k, v, i, f (and optionally c0, n0, m0) for tests; never zeros."""
    ks = jax.random.split(key, 8)
    q = jax.random.normal(ks[0], (B, NH, S, DHQK), dtype)
    k = jax.random.normal(ks[1], (B, NH, S, DHQK), dtype)
    v = jax.random.normal(ks[2], (B, NH, S, DHV), dtype)
    i = jax.random.normal(ks[3], (B, NH, S), jnp.float32) * 2.0
    f = jax.random.normal(ks[4], (B, NH, S), jnp.float32) + 3.0
    out = dict(q=q, k=k, v=v, i=i.astype(dtype), f=f.astype(dtype))
    if with_states:
        out["c_initial"] = jax.random.normal(ks[5], (B, NH, DHQK, DHV), jnp.float32)
        out["n_initial"] = jax.random.normal(ks[6], (B, NH, DHQK), jnp.float32)
        out["m_initial"] = jax.random.normal(ks[7], (B, NH), jnp.float32)
    return out
