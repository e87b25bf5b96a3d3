"""Next-token cross-entropy, plain or in sequence chunks.

The chunked form maps hidden states (B, S, D) to logits one chunk of ``chunk`` positions at a time, so
neither the forward nor the backward pass holds the fp32 (B, S, V) logits: only (B, chunk, V) at a time.
Under differentiation it computes each chunk's gradients (to the head's parameters and to the hidden states)
in the forward pass, right after that chunk's loss, from the logits it already holds (a custom VJP; the
loss is a scalar, so the backward pass only scales them): the logits are computed once, not again in the
backward. It equals the plain loss up to the order of the fp32 sums.

Given the logits' soft cap, the chunked form takes the logits before it and applies it itself, so that
each chunk's loss and gradient are computed from those (compute-dtype) logits, read once for their max,
once for the log-sum-exp and once for the gradient, instead of from fp32 capped logits held in between.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
import optax

from ..layers.init import soft_cap as apply_soft_cap

LOSS_SCOPE = "chunked_loss"  # the named scope of the chunked loss's operations (profiles, compiled programs)


def cross_entropy(logits: jax.Array, targets: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """Mean next-token loss in nats (over the targets with weight 1 when ``weights`` (B, S) is given);
    logits (B, S, V) are promoted to fp32."""
    losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    if weights is None:
        return losses.mean()
    return (losses * weights).sum() / jnp.maximum(weights.sum(), 1)


def chunked_cross_entropy(
    head: Callable[[jax.Array], jax.Array],
    features: jax.Array,
    targets: jax.Array,
    weights: jax.Array | None = None,
    chunk: int | None = None,
    soft_cap: float | None = None,
) -> jax.Array:
    """:func:`cross_entropy` of ``soft_cap * tanh(head(features) / soft_cap)`` (of ``head(features)``
    when ``soft_cap`` is None) computed ``chunk`` positions at a time.

    ``head``: hidden states (B, c, D) -> logits (B, c, V) (e.g. ``model.head``, or ``model.uncapped_logits``
    with ``soft_cap=config.logit_soft_cap``); ``features`` (B, S, D); ``targets`` int (B, S); ``weights``
    (B, S) or None. ``chunk`` None/0, or >= S: the plain loss. A last chunk shorter than ``chunk`` is padded
    with weight-0 positions."""
    batch, length = targets.shape
    if features.shape[:2] != (batch, length):
        raise ValueError(f"features shape {tuple(features.shape)} does not match targets shape {(batch, length)}")
    if chunk is not None and chunk < 0:
        raise ValueError(f"loss chunk must be >= 0 or None, got {chunk}")
    if not chunk or chunk >= length:
        return cross_entropy(_capped(head(features), soft_cap), targets, weights)
    count = -(-length // chunk)
    pad = count * chunk - length
    mask = jnp.ones((batch, length), jnp.float32) if weights is None else weights.astype(jnp.float32)
    denominator = batch * length if weights is None else jnp.maximum(mask.sum(), 1)

    def chunks(x):  # (B, S, ...) -> (count, B, chunk, ...), zero-padded along S
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
        return jnp.moveaxis(x.reshape(batch, count, chunk, *x.shape[2:]), 1, 0)

    x = chunks(features)
    head_fn, head_params = _explicit_params(head, x[0])
    scale = mask / denominator  # each position's share of the mean
    with jax.named_scope(LOSS_SCOPE):
        return _weighted_loss_sum(head_fn, soft_cap, head_params, x, chunks(targets), chunks(scale))


def _explicit_params(head: Callable[[jax.Array], jax.Array], x: jax.Array):
    """``head`` as ``head_fn(x, *params)`` and the floating-point arrays it closes over (the head's
    parameters), so that a custom VJP can return their gradients. Traced afresh on every call, so it never
    reuses the parameters of an earlier call."""
    closed = jax.make_jaxpr(head)(x)
    floating = [i for i, c in enumerate(closed.consts) if jnp.issubdtype(jnp.result_type(c), jnp.inexact)]
    fixed = {i: c for i, c in enumerate(closed.consts) if i not in floating}

    def head_fn(x, *params):
        consts = {**fixed, **dict(zip(floating, params))}
        return jax.core.eval_jaxpr(closed.jaxpr, [consts[i] for i in range(len(closed.consts))], x)[0]

    return head_fn, [closed.consts[i] for i in floating]


@partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _weighted_loss_sum(head_fn, soft_cap, head_params, x, targets, scale):
    """sum of scale * cross-entropy(soft-capped head_fn(x, *head_params), targets) over all chunks;
    x (count, B, c, D), targets and scale (count, B, c)."""

    def add_chunk(total, chunk):
        x, t, s = chunk
        logits = head_fn(x, *head_params)
        losses, _ = _losses(logits, _capped(logits, soft_cap), t, soft_cap)
        return total + (losses * s).sum(), None

    return jax.lax.scan(add_chunk, jnp.zeros((), jnp.float32), (x, targets, scale))[0]


def _capped(logits: jax.Array, soft_cap: float | None) -> jax.Array:
    """(..., V) logits before the soft cap -> the fp32 logits the loss is of."""
    return apply_soft_cap(logits.astype(jnp.float32), soft_cap)


def _losses(logits: jax.Array, capped: jax.Array, targets: jax.Array, soft_cap: float | None):
    """Each position's cross-entropy (...) and its log-sum-exp (...) from ``logits`` (..., V) before the soft
    cap and ``capped``, the same after it. The shift is the largest capped logit, the cap of the largest
    logit (tanh increases), and the target's capped logit the cap of its logit: reductions and a gather of
    ``logits`` itself, so XLA reads ``capped`` in one fused reduction and need not store it."""
    shift = _capped(jnp.max(logits, axis=-1), soft_cap)
    lse = shift + jnp.log(jnp.sum(jnp.exp(capped - shift[..., None]), axis=-1))
    target = _capped(jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0], soft_cap)
    return lse - target, lse


def _loss_sum_and_gradients(head_fn, soft_cap, head_params, x, targets, scale):
    """The loss sum and, chunk by chunk from the same logits, its gradients to head_params and x; the
    per-position losses are the gradient to scale."""

    def add_chunk(carry, chunk):
        total, grads = carry
        x, t, s = chunk
        logits, head_vjp = jax.vjp(lambda params, x: head_fn(x, *params), head_params, x)
        losses, lse = _losses(logits, _capped(logits, soft_cap), t, soft_cap)
        # capped again behind a barrier: else XLA stores the log-sum-exp fusion's fp32 capped logits for
        # this fusion (it does not repeat a tanh), a (B, c, V) fp32 write and read more per chunk
        capped = _capped(jax.lax.optimization_barrier(logits), soft_cap)
        dcapped = (jnp.exp(capped - lse[..., None]) - jax.nn.one_hot(t, logits.shape[-1])) * s[..., None]
        dlogits = dcapped if soft_cap is None else dcapped * (1 - jnp.square(capped / soft_cap))
        dparams, dx = head_vjp(dlogits.astype(logits.dtype))
        return (total + (losses * s).sum(), jax.tree.map(jnp.add, grads, dparams)), (dx, losses)

    zeros = jax.tree.map(jnp.zeros_like, head_params)
    (total, grads), (dx, losses) = jax.lax.scan(add_chunk, (jnp.zeros((), jnp.float32), zeros), (x, targets, scale))
    return total, (grads, dx, losses)


def _scaled_gradients(head_fn, soft_cap, residuals, cotangent):
    del head_fn, soft_cap
    grads, dx, losses = residuals
    scaled = jax.tree.map(lambda g: (cotangent * g).astype(g.dtype), grads)
    return scaled, (cotangent * dx).astype(dx.dtype), None, cotangent * losses


_weighted_loss_sum.defvjp(_loss_sum_and_gradients, _scaled_gradients)
