"""The mLSTM recurrence as both layer variants call it: a registry kernel for sequences, a step
kernel for single tokens, and the carried state (C, n, m).

Shapes: q, k (B, NH, S, DHQK); v (B, NH, S, DHV); i, f (B, NH, S) fp32 gate pre-activations;
h (B, NH, S, DHV) in q's dtype. State: c (B, NH, DHQK, DHV), n (B, NH, DHQK), m (B, NH), fp32.
Under a device mesh (``jax.set_mesh``) each device runs the kernel on its own batch and head slice
(:func:`xlstm_flax.sharding.per_device_over_heads`).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from xlstm_flax.kernels import get_kernel, resolve_kernel_name

from ..sharding import per_device_over_heads
from .config import mLSTMLayerConfig


class mLSTMState(NamedTuple):
    c: jax.Array
    n: jax.Array
    m: jax.Array


def zero_state(batch_size: int, num_heads: int, dhqk: int, dhv: int) -> mLSTMState:
    """The state before the first token (zeros; m = 0 as in the kernels)."""
    return mLSTMState(
        jnp.zeros((batch_size, num_heads, dhqk, dhv), jnp.float32),
        jnp.zeros((batch_size, num_heads, dhqk), jnp.float32),
        jnp.zeros((batch_size, num_heads), jnp.float32),
    )


def run_sequence(
    config: mLSTMLayerConfig,
    q,
    k,
    v,
    i,
    f,
    state: mLSTMState | None,
    return_state: bool,
    segment_ids: jax.Array | None = None,
):
    """Runs ``config.kernel`` over the sequence (restarting at segment starts when ``segment_ids``
    (B, S) is given); returns (h, last state or None)."""
    kernel = get_kernel(config.kernel)
    name = resolve_kernel_name(config.kernel)
    resets = () if segment_ids is None else (segment_ids,)

    def sequence(q, k, v, i, f, *rest):
        segments, initial_state = rest[: len(resets)], rest[len(resets) :]
        initial = dict(zip(("c_initial", "n_initial", "m_initial"), initial_state))
        if segments:
            initial["segment_ids"] = segments[0]
        return kernel(
            q, k, v, i, f, **initial, return_last_states=return_state, eps=config.eps, chunk_size=config.chunk_size
        )

    # segment_ids (B, S) has no head axis: each device takes its batch rows, all of them (argument 5)
    batch_only = (5,) if resets else ()
    out = per_device_over_heads(sequence, name, batch_only=batch_only)(
        q, k, v, i, f, *resets, *(() if state is None else state)
    )
    if return_state:
        h, last = out
        return h, mLSTMState(*last)
    return out, None


def run_step(config: mLSTMLayerConfig, q, k, v, i, f, state: mLSTMState):
    """One token (S = 1) through ``config.step_kernel``; returns (h (B, NH, 1, DHV), new state)."""
    kernel = get_kernel(config.step_kernel)
    name = resolve_kernel_name(config.step_kernel)

    def step(*args):
        return kernel(*args, eps=config.eps)

    h, (c, n, m) = per_device_over_heads(step, name)(
        q[:, :, 0], k[:, :, 0], v[:, :, 0], i[:, :, 0], f[:, :, 0], state.c, state.n, state.m
    )
    return h[:, :, None], mLSTMState(c, n, m)


class mLSTMMixer(nnx.Module):
    """Shared call/step plumbing of the mLSTM layer variants.

    Subclasses set ``self.config`` and implement ``_forward(x, cell, state, segment_ids) -> (y,
    new_state)``, where ``cell(q, k, v, i, f, cell_state) -> (h, new_cell_state)`` is the recurrence to
    use, ``state`` is the layer state (or None for a fresh sequence) and ``segment_ids`` (B, S) int or
    None marks the documents of packed rows (the state restarts at each).
    """

    def __call__(self, x: jax.Array, state=None, *, return_state: bool = False, segment_ids: jax.Array | None = None):
        """x (B, S, D) -> (y (B, S, D), the state after the last token if ``return_state`` else None)."""

        def cell(q, k, v, i, f, cell_state):
            return run_sequence(self.config, q, k, v, i, f, cell_state, return_state, segment_ids)

        y, new_state = self._forward(x, cell, state, segment_ids)
        return y, (new_state if return_state else None)

    def step(self, x: jax.Array, state):
        """One token: x (B, D) -> (y (B, D), new state)."""

        def cell(q, k, v, i, f, cell_state):
            return run_step(self.config, q, k, v, i, f, cell_state)

        y, new_state = self._forward(x[:, None], cell, state, None)
        return y[:, 0], new_state
