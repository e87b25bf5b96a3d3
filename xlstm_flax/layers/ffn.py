"""Gated feed-forward layer (SwiGLU): down(silu(up_gate(x)) * up(x))."""

import jax
import jax.numpy as jnp
from flax import nnx

from .config import FFNConfig
from .init import dense, small_init, wang_init
from .projections import project


class GatedFFN(nnx.Module):
    """x (..., D) -> (..., D); hidden width ``config.hidden_dim(D)`` (proj factor rounded up)."""

    def __init__(
        self,
        dim: int,
        config: FFNConfig,
        *,
        num_blocks: int,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        hidden = config.hidden_dim(dim)
        common = dict(use_bias=config.use_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        up = dict(axes=("embed", "mlp"), kernel_init=small_init(dim), **common)
        self.proj_up_gate = dense(dim, hidden, **up)
        self.proj_up = dense(dim, hidden, **up)
        self.proj_down = dense(hidden, dim, axes=("mlp", "embed"), kernel_init=wang_init(hidden, num_blocks), **common)

    def __call__(self, x: jax.Array) -> jax.Array:
        up_gate, up = project(x, self.proj_up_gate, self.proj_up)
        return self.proj_down(jax.nn.silu(up_gate) * up)
