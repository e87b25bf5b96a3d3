"""Next-token cross-entropy, plain or in sequence chunks.

The chunked form maps hidden states (B, S, D) to logits one chunk of ``chunk`` positions at a time, so
neither the forward nor the backward pass holds the fp32 (B, S, V) logits: only (B, chunk, V) at a time.
Under differentiation it computes each chunk's gradients (to the head's parameters and to the hidden states)
in the forward pass, right after that chunk's loss, from the logits it already holds (a custom VJP; the
loss is a scalar, so the backward pass only scales them): the logits are computed once, not again in the
backward. It equals the plain loss up to the order of the fp32 sums.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
import optax


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
) -> jax.Array:
    """:func:`cross_entropy` of ``head(features)`` computed ``chunk`` positions at a time.

    ``head``: hidden states (B, c, D) -> logits (B, c, V) (e.g. ``model.head``); ``features`` (B, S, D);
    ``targets`` int (B, S); ``weights`` (B, S) or None. ``chunk`` None/0, or >= S: the plain loss. A last
    chunk shorter than ``chunk`` is padded with weight-0 positions."""
    batch, length = targets.shape
    if features.shape[:2] != (batch, length):
        raise ValueError(f"features shape {tuple(features.shape)} does not match targets shape {(batch, length)}")
    if chunk is not None and chunk < 0:
        raise ValueError(f"loss chunk must be >= 0 or None, got {chunk}")
    if not chunk or chunk >= length:
        return cross_entropy(head(features), targets, weights)
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
    return _weighted_loss_sum(head_fn, head_params, x, chunks(targets), chunks(scale))


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


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _weighted_loss_sum(head_fn, head_params, x, targets, scale):
    """sum of scale * cross-entropy(head_fn(x, *head_params), targets) over all chunks; x (count, B, c, D),
    targets and scale (count, B, c)."""

    def add_chunk(total, chunk):
        x, t, s = chunk
        _, losses = _log_probs_and_losses(head_fn(x, *head_params), t)
        return total + (losses * s).sum(), None

    return jax.lax.scan(add_chunk, jnp.zeros((), jnp.float32), (x, targets, scale))[0]


def _log_probs_and_losses(logits: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
    """logits (..., V) -> fp32 log-softmax (..., V) and each position's cross-entropy (...)."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))
    return log_probs, -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]


def _loss_sum_and_gradients(head_fn, head_params, x, targets, scale):
    """The loss sum and, chunk by chunk from the same logits, its gradients to head_params and x; the
    per-position losses are the gradient to scale."""

    def add_chunk(carry, chunk):
        total, grads = carry
        x, t, s = chunk
        logits, head_vjp = jax.vjp(lambda params, x: head_fn(x, *params), head_params, x)
        log_probs, losses = _log_probs_and_losses(logits, t)
        dlogits = (jnp.exp(log_probs) - jax.nn.one_hot(t, logits.shape[-1])) * s[..., None]
        dparams, dx = head_vjp(dlogits.astype(logits.dtype))
        return (total + (losses * s).sum(), jax.tree.map(jnp.add, grads, dparams)), (dx, losses)

    zeros = jax.tree.map(jnp.zeros_like, head_params)
    (total, grads), (dx, losses) = jax.lax.scan(add_chunk, (jnp.zeros((), jnp.float32), zeros), (x, targets, scale))
    return total, (grads, dx, losses)


def _scaled_gradients(head_fn, residuals, cotangent):
    del head_fn
    grads, dx, losses = residuals
    scaled = jax.tree.map(lambda g: (cotangent * g).astype(g.dtype), grads)
    return scaled, (cotangent * dx).astype(dx.dtype), None, cotangent * losses


_weighted_loss_sum.defvjp(_loss_sum_and_gradients, _scaled_gradients)
