"""Document boundaries in packed rows: ``segment_ids`` (B, S) int, a new segment starting wherever
the id differs from the previous position's (the convention of the mLSTM kernels, docs/kernels.md)."""

import jax
import jax.numpy as jnp


def segment_starts(segment_ids: jax.Array) -> jax.Array:
    """bool (B, S): True where a new segment starts after position 0 (where a carried state resets)."""
    changed = segment_ids[:, 1:] != segment_ids[:, :-1]
    return jnp.concatenate([jnp.zeros_like(changed[:, :1]), changed], axis=1)


def segment_index(segment_ids: jax.Array) -> jax.Array:
    """int32 (B, S): 0 for the first segment of each row, then 1, 2, ... (ids that recur later count
    as new segments)."""
    return jnp.cumsum(segment_starts(segment_ids), axis=1, dtype=jnp.int32)
