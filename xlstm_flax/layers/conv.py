"""Causal depthwise 1-d convolution over time with a carried input buffer for step-wise inference."""

import jax
import jax.numpy as jnp
from flax import nnx

from ..sharding import param
from .segments import segment_index


class CausalConv1d(nnx.Module):
    """y_t = bias + sum_j kernel[j] * x_{t - K + 1 + j} per channel (x_{<0} from the carried buffer).

    x (B, S, D) -> y (B, S, D); the state (B, K - 1, D) fp32 holds the last K - 1 inputs. With
    ``segment_ids`` (B, S) int, the window of position t sees only inputs of t's segment (the carried
    buffer counts as part of the first segment), as if each segment were convolved alone.
    ``channel_axis``: the logical axis name of the D channels (see :mod:`xlstm_flax.sharding`).
    """

    def __init__(
        self,
        dim: int,
        kernel_size: int,
        *,
        channel_axis: str | None = None,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        if kernel_size < 1:
            raise ValueError(f"kernel_size must be >= 1, got {kernel_size}")
        self.dim, self.kernel_size, self.dtype = dim, kernel_size, dtype
        bound = kernel_size**-0.5  # fan-in of a depthwise filter is K
        kernel = jax.random.uniform(rngs.params(), (kernel_size, dim), param_dtype, -bound, bound)
        self.kernel = param(kernel, None, channel_axis)
        self.bias = param(jnp.zeros((dim,), param_dtype), channel_axis)

    def init_state(self, batch_size: int) -> jax.Array:
        return jnp.zeros((batch_size, self.kernel_size - 1, self.dim), jnp.float32)

    def __call__(
        self, x: jax.Array, state: jax.Array | None = None, segment_ids: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """Returns (y (B, S, D) in the compute dtype, new state (B, K - 1, D))."""
        B, S, _ = x.shape
        K = self.kernel_size
        if state is None:
            state = self.init_state(B)
        padded = jnp.concatenate([state.astype(self.dtype), x.astype(self.dtype)], axis=1)
        windows = [padded[:, j : j + S] for j in range(K)]  # windows[j][:, t] = x_{t - K + 1 + j}
        tail = padded[:, S:]  # the last K - 1 inputs
        if segment_ids is not None:  # drop other segments' inputs; the buffer belongs to the first segment
            index = segment_index(segment_ids)
            ids = jnp.concatenate([jnp.zeros((B, K - 1), index.dtype), index], axis=1)
            windows = [jnp.where((ids[:, j : j + S] == index)[..., None], w, 0) for j, w in enumerate(windows)]
            tail = jnp.where((ids[:, S:] == index[:, -1:])[..., None], tail, 0)
        kernel = self.kernel[...].astype(self.dtype)
        y = sum(w * kernel[j] for j, w in enumerate(windows))
        y = y + self.bias[...].astype(self.dtype)
        return y, tail.astype(jnp.float32)
