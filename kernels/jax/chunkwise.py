"""``chunkwise--jax``: states at chunk boundaries, the quadratic form only inside each chunk.

With chunk length L and NC = S / L chunks (S padded to a multiple of L), per batch and head, with
``b`` the inclusive cumulative log forget gate inside a chunk, ``g = b_L`` the chunk's total and
``a_j = i_j + g - b_j`` the log weight of step j in its chunk-end state:

1. chunk states, all at once (no sequential loop): every chunk's own contribution
   ``C_j^loc = sum_l exp(a_l - max a) k_l v_l^T`` in one batched matmul, then the state entering
   chunk t mixes them, ``C_t = w_t,init C_0 + sum_{j<t} w_tj C_j^loc``, one (NC x NC) matmul per head.
   The log weights are segment sums of g (summed from j + 1, never differences of long cumulative
   sums), and ``m_t`` = max of the log weights is exactly the step recurrence's stabiliser;
2. outputs, all chunks at once: ``h_i = sum_{j<=i} P_ij v_j + r_i (s q_i)^T C_t`` with
   ``m_i = max(b_i + m_t, max_{j<=i}(b_i - b_j + i_j))`` (the recurrence's m at step i, exactly),
   ``P_ij = (s q_i . k_j) exp(b_i - b_j + i_j - m_i)``, ``r_i = exp(b_i + m_t - m_i)``; each row is
   divided by its denominator ``max(|sum_j P_ij + r_i (s q_i) . n_t|, exp(-m_i)) + eps`` before the
   matmuls, so they write h directly.
Matmul operands are in q's dtype (bf16: tensor cores, fp32 accumulation); gate math in fp32.
Memory: O(S (DHQK + DHV) + S L + NC DHQK DHV + NC^2), no S x S matrix. Backward: JAX autodiff,
except the row stabiliser m_i, whose gradient is routed by hand in O(L) per row (``_row_stabiliser``).
The chunk mixing costs 2 NC^2 DHQK DHV FLOP per head, quadratic in NC but small next to the rest
while NC << 2 L (estimated ~10% of the forward at S = 131072, chunk 256, 8 x 8 heads); for much
longer sequences, call in pieces and pass the states.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..common import (
    check_inputs,
    check_options,
    compute_dtype,
    default_chunk_size,
    default_qk_scale,
    denominator_floor,
    initial_states_in,
    log_sigmoid_fp32,
    mixed_einsum,
    pad_resets,
    pad_sequence,
    segment_resets,
    segment_sums,
    segmented_cumsum,
)


def mlstm_chunkwise(
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
    """mLSTM over a sequence, chunk by chunk (any S: padded to a multiple of ``min(chunk_size, S)``;
    ``chunk_size=None`` takes the package's policy, ``common.default_chunk_size(S)``).

    q, k: (B, NH, S, DHQK); v: (B, NH, S, DHV); i, f: (B, NH, S); optional initial states
    c (B, NH, DHQK, DHV), n (B, NH, DHQK), m (B, NH); ``segment_ids`` (B, S) int: the state restarts
    from zero (m = 0) where the id changes (docs/math.md, "Document resets"). Returns h (B, NH, S, DHV)
    in q's dtype, or ``(h, (c, n, m))`` with fp32 states (fp64 for fp64 q) when ``return_last_states``.
    """
    dims = check_inputs(q, k, v, i, f, c_initial, n_initial, m_initial)
    check_options(chunk_size, qk_scale, eps)
    resets = segment_resets(segment_ids, dims)
    chunk_size = default_chunk_size(dims.S) if chunk_size is None else int(chunk_size)
    dtype = compute_dtype(q.dtype)
    c0, n0, m0 = initial_states_in(dtype, dims, c_initial, n_initial, m_initial)
    L = min(chunk_size, dims.S)
    (q, k, v, i, f), _ = pad_sequence(q, k, v, i, f, L)
    NC = q.shape[2] // L

    def chunked(x):  # (B, NH, NC * L, ...) -> (B, NH, NC, L, ...)
        return x.reshape(x.shape[0], x.shape[1], NC, L, *x.shape[3:])

    q, k, v = chunked(q), chunked(k), chunked(v)
    i = chunked(i).astype(dtype)
    logf = log_sigmoid_fp32(chunked(f)).astype(dtype)
    if resets is None:
        seg = None
        b = jnp.cumsum(logf, axis=-1)  # (B, NH, NC, L)
    else:  # seg: the chunk-local segment counter (0 until the chunk's first reset); b restarts at resets
        resets = chunked(pad_resets(resets, NC * L)[:, None])  # (B, 1, NC, L)
        seg = jnp.cumsum(resets, axis=-1)
        b = segmented_cumsum(logf, resets)
    g = b[..., -1]  # (B, NH, NC)
    a = i + g[..., None] - b
    if seg is not None:  # only the chunk's last segment reaches its end state
        a = jnp.where(seg == seg[..., -1:], a, -jnp.inf)

    # log weights of the initial state (column 0) and of chunk j (column j + 1) in the state
    # entering chunk t = 0 .. NC (t = NC: the final state); m: the stabiliser of that state
    a_max = jnp.max(a, axis=-1)
    log_w = segment_sums(jnp.concatenate([jnp.zeros_like(g[..., :1]), g], axis=-1))
    if seg is not None:  # a chunk with a reset also holds the restarted zero state (m = 0)
        restarts = seg[..., -1] > 0  # (B, 1, NC)
        a_max = jnp.where(restarts, jnp.maximum(a_max, g), a_max)
        crossed = jnp.cumsum(jnp.concatenate([jnp.zeros_like(restarts[..., :1]), restarts], axis=-1), axis=-1)
        log_w = jnp.where(crossed[..., :, None] == crossed[..., None, :], log_w, -jnp.inf)  # no reset between
    log_w = log_w + jnp.concatenate([m0[..., None], a_max], axis=-1)[..., None, :]
    m = jnp.max(log_w, axis=-1)  # (B, NH, NC + 1)
    w = jnp.exp(log_w - m[..., None])
    k_w = k * jnp.exp(a - a_max[..., None])[..., None]  # (B, NH, NC, L, DHQK)

    c_local = mixed_einsum("bhjld,bhjlv->bhjdv", k_w, v, q.dtype, out_dtype=q.dtype)  # (B, NH, NC, DHQK, DHV)
    c_k = mixed_einsum(
        "bhtj,bhjdv->bhtdv", w[..., :NC, 1:], c_local, q.dtype, out_dtype=q.dtype if c_initial is None else None
    )
    if c_initial is not None:  # sum in fp32, round once
        c_k = (c_k + w[..., :NC, 0, None, None] * c0[:, :, None]).astype(q.dtype)
    n_local = jnp.sum(k_w, axis=-2)
    n_all = mixed_einsum("bhtj,bhjd->bhtd", w, jnp.concatenate([n0[:, :, None], n_local], axis=2), dtype)
    h = _chunk_outputs(
        q, k, v, i, b, seg, c_k, n_all[:, :, :NC], m[..., :NC], default_qk_scale(dims.DHQK, qk_scale), eps
    )
    h = h.reshape(dims.B, dims.NH, NC * L, dims.DHV)[:, :, : dims.S]
    if not return_last_states:
        return h
    w_last = w[..., NC, :]  # (B, NH, NC + 1)
    c_last = w_last[..., 0, None, None] * c0 + mixed_einsum(
        "bhjld,bhjlv->bhdv", k_w * w_last[..., 1:, None, None], v, q.dtype
    )
    return h, (c_last, n_all[:, :, NC], m[..., NC])


def _chunk_outputs(q, k, v, i, b, seg, c_k, n_k, m_k, scale, eps):
    """h (B, NH, NC, L, DHV) in q's dtype from the states entering every chunk.

    q, k: (B, NH, NC, L, DHQK); v: (B, NH, NC, L, DHV); i, b: (B, NH, NC, L); seg: None or the
    chunk-local segment counter (B, 1, NC, L); c_k: (B, NH, NC, DHQK, DHV); n_k: (B, NH, NC, DHQK);
    m_k: (B, NH, NC).
    """
    L = b.shape[-1]
    pairs = jnp.tril(jnp.ones((L, L), bool))  # j <= i (and, with resets, j in i's segment)
    if seg is not None:
        pairs = pairs & (seg[..., :, None] == seg[..., None, :])
    log_d = _step_log_weights(b, i, pairs)
    log_r = b + m_k[..., None]  # log weight of the entering state in row i
    if seg is None:
        m = _row_stabiliser(log_r, b, i, pairs)
    else:  # rows from the chunk's first reset on see the restarted zero state (log weight b + 0) instead
        m = _row_stabiliser(jnp.where(seg == 0, log_r, b), b, i, pairs)
        log_r = jnp.where(seg == 0, log_r, -jnp.inf)
    p = mixed_einsum("bhcid,bhcjd->bhcij", q, k, q.dtype) * (scale * jnp.exp(log_d - m[..., None]))
    r = scale * jnp.exp(log_r - m)
    nq = jnp.sum(p, axis=-1) + r * mixed_einsum("bhcid,bhcd->bhci", q, n_k, m.dtype)
    inv_den = 1.0 / (jnp.maximum(jnp.abs(nq), denominator_floor(m)) + eps)
    h = mixed_einsum("bhcij,bhcjv->bhciv", p * inv_den[..., None], v, q.dtype) + mixed_einsum(
        "bhcid,bhcdv->bhciv", q * (r * inv_den)[..., None], c_k, q.dtype
    )
    return h.astype(q.dtype)


def _step_log_weights(b, i, pairs):
    """(..., L, L) log weight ``b_i - b_j + i_j`` of step j in row i where ``pairs``, else -inf."""
    return jnp.where(pairs, b[..., :, None] - b[..., None, :] + i[..., None, :], -jnp.inf)


@jax.custom_vjp
def _row_stabiliser(state, b, i, pairs):
    """m_i = max(state_i, max_j log_d_ij) (..., L): the max of the row's log weights as rounded, so no
    exponent rounds above 0 (finite for huge gates). state, b, i: (..., L); pairs: bool, broadcasts to
    (..., L, L). Its gradient is O(L) per row (autodiff of the (L x L) max would keep an (L x L) argmax
    mask for the backward, which made chunkwise--jax's backward up to 2x slower): the cotangent goes to
    state_i where the state wins (ties included), else to b_i (+), b_j (-) and i_j (+) of the row's
    first maximal column j; one valid subgradient at ties."""
    return jnp.maximum(state, jnp.max(_step_log_weights(b, i, pairs), axis=-1))


def _row_stabiliser_fwd(state, b, i, pairs):
    log_d = _step_log_weights(b, i, pairs)
    steps = jnp.max(log_d, axis=-1)
    return jnp.maximum(state, steps), (state >= steps, jnp.argmax(log_d, axis=-1))


def _row_stabiliser_bwd(residuals, dm):
    state_wins, column = residuals  # (..., L) bool, int
    d_state = jnp.where(state_wins, dm, 0)
    d_row = dm - d_state  # rows whose max is a step's log weight
    hits = jnp.arange(dm.shape[-1])[:, None] == column[..., None, :]  # (..., L_j, L_i): fused into the row sum
    d_column = jnp.sum(jnp.where(hits, d_row[..., None, :], 0), axis=-1)
    return d_state, d_row - d_column, d_column, None


_row_stabiliser.defvjp(_row_stabiliser_fwd, _row_stabiliser_bwd)
