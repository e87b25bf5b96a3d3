"""One recurrent mLSTM step (docs/math.md): decoding, and the body of ``recurrent--jax``."""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from ..common import check_step_inputs, compute_dtype, default_qk_scale, denominator_floor, log_sigmoid_fp32


def mlstm_step(q, k, v, i, f, c, n, m, *, qk_scale=None, eps=1e-6):
    """Advances the stabilised state (c, n, m) by one token.

    q, k: (B, NH, DHQK); v: (B, NH, DHV); i, f: (B, NH) raw gate pre-activations;
    c: (B, NH, DHQK, DHV); n: (B, NH, DHQK); m: (B, NH).
    Returns ``h, (c, n, m)``: h (B, NH, DHV) in q's dtype, the new states in fp32 (fp64 for fp64 q).
    """
    dims = check_step_inputs(q, k, v, i, f, c, n, m)
    dtype = compute_dtype(q.dtype)
    sq = default_qk_scale(dims.DHQK, qk_scale) * q.astype(dtype)
    k, v, i, c, n, m = (x.astype(dtype) for x in (k, v, i, c, n, m))
    logf = log_sigmoid_fp32(f).astype(dtype)

    m_new = jnp.maximum(logf + m, i)
    decay = jnp.exp(logf + m - m_new)
    gain_k = jnp.exp(i - m_new)[..., None] * k
    c_new = decay[..., None, None] * c + gain_k[..., :, None] * v[..., None, :]
    n_new = decay[..., None] * n + gain_k

    num = jnp.einsum("bhd,bhdv->bhv", sq, c_new, precision=lax.Precision.HIGHEST)
    den = jnp.maximum(jnp.abs(jnp.sum(n_new * sq, axis=-1)), denominator_floor(m_new))
    h = num / (den + eps)[..., None]
    return h.astype(q.dtype), (c_new, n_new, m_new)
