"""Next-token cross-entropy, plain or in sequence chunks.

The chunked form maps hidden states (B, S, D) to logits one chunk of ``chunk`` positions at a time,
under ``jax.checkpoint``, so neither the forward nor the backward pass holds the fp32 (B, S, V) logits:
only (B, chunk, V) at a time. It equals the plain loss up to the order of the fp32 sums.
"""

from __future__ import annotations

from collections.abc import Callable

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

    def chunks(x):  # (B, S, ...) -> (count, B, chunk, ...), zero-padded along S
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
        return jnp.moveaxis(x.reshape(batch, count, chunk, *x.shape[2:]), 1, 0)

    @jax.checkpoint
    def chunk_loss(args):
        x, t, w = args
        losses = optax.softmax_cross_entropy_with_integer_labels(head(x).astype(jnp.float32), t)
        return (losses * w).sum()

    total = jax.lax.map(chunk_loss, (chunks(features), chunks(targets), chunks(mask))).sum()
    if weights is None:
        return total / (batch * length)
    return total / jnp.maximum(mask.sum(), 1)
