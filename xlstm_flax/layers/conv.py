"""Causal depthwise 1-d convolution over time with a carried input buffer for step-wise inference."""
import jax
import jax.numpy as jnp
from flax import nnx

from ..sharding import param


class CausalConv1d(nnx.Module):
    """y_t = bias + sum_j kernel[j] * x_{t - K + 1 + j} per channel (x_{<0} from the carried buffer).

    x (B, S, D) -> y (B, S, D); the state (B, K - 1, D) fp32 holds the last K - 1 inputs.
    ``channel_axis``: the logical axis name of the D channels (see :mod:`xlstm_flax.sharding`).
    """

    def __init__(self, dim: int, kernel_size: int, *, channel_axis: str | None = None, dtype=jnp.float32,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        if kernel_size < 1:
            raise ValueError(f"kernel_size must be >= 1, got {kernel_size}")
        self.dim, self.kernel_size, self.dtype = dim, kernel_size, dtype
        bound = kernel_size**-0.5  # fan-in of a depthwise filter is K
        kernel = jax.random.uniform(rngs.params(), (kernel_size, dim), param_dtype, -bound, bound)
        self.kernel = param(kernel, None, channel_axis)
        self.bias = param(jnp.zeros((dim,), param_dtype), channel_axis)

    def init_state(self, batch_size: int) -> jax.Array:
        return jnp.zeros((batch_size, self.kernel_size - 1, self.dim), jnp.float32)

    def __call__(self, x: jax.Array, state: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """Returns (y (B, S, D) in the compute dtype, new state (B, K - 1, D))."""
        B, S, _ = x.shape
        if state is None:
            state = self.init_state(B)
        padded = jnp.concatenate([state.astype(self.dtype), x.astype(self.dtype)], axis=1)
        kernel = self.kernel[...].astype(self.dtype)
        y = sum(padded[:, j : j + S] * kernel[j] for j in range(self.kernel_size))
        y = y + self.bias[...].astype(self.dtype)
        new_state = padded[:, padded.shape[1] - (self.kernel_size - 1) :].astype(jnp.float32)
        return y, new_state
