"""Initialisers from the xLSTM literature and a Linear factory with the project's precision policy.

small-init (Nguyen & Salazar 2019): normal with std sqrt(2 / (5 d)) for projections out of width d.
wang-init (GPT-NeoX): normal with std 2 / (num_blocks sqrt(d)) for projections into the residual.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from ..sharding import partitioned


def small_init(dim: int) -> nnx.Initializer:
    return nnx.initializers.normal(stddev=(2.0 / (5.0 * dim)) ** 0.5)


def wang_init(dim: int, num_blocks: int) -> nnx.Initializer:
    return nnx.initializers.normal(stddev=2.0 / (num_blocks * dim**0.5))


def linspace_init(low: float, high: float) -> nnx.Initializer:
    """Fills the last axis with values spread linearly over [low, high] (repeated over other axes)."""

    def init(key, shape, dtype=jnp.float32):
        del key
        return jnp.broadcast_to(jnp.linspace(low, high, shape[-1], dtype=dtype), shape)

    return init


def dense(
    in_features: int,
    out_features: int,
    *,
    axes: tuple[str | None, str | None],
    kernel_init: nnx.Initializer,
    use_bias: bool,
    dtype,
    param_dtype,
    rngs: nnx.Rngs,
    bias_init: nnx.Initializer = nnx.initializers.zeros,
    preferred_element_type=None,
) -> nnx.Linear:
    """``nnx.Linear`` computing in ``dtype`` (None: the promoted dtype of input and parameters) with
    parameters stored in ``param_dtype`` and, if given, its matmul output in ``preferred_element_type``;
    ``axes`` are the logical names of (in_features, out_features) for :data:`xlstm_flax.sharding.RULES`."""
    return nnx.Linear(
        in_features,
        out_features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=partitioned(kernel_init, *axes),
        bias_init=partitioned(bias_init, axes[1]),
        preferred_element_type=preferred_element_type,
        rngs=rngs,
    )


def gate_projections(in_features: int, config, *, in_axis: str | None, param_dtype, rngs: nnx.Rngs):
    """The mLSTM input and forget gate pre-activation projections, in_features -> num_heads each: zero
    kernels, biases ``config.igate_bias_init`` and linspace(``fgate_bias_min``, ``fgate_bias_max``). They
    multiply in the promoted dtype of input and kernel with fp32 output: bf16 x bf16 products are exact in
    fp32, so the pre-activations equal those of the fp32 matmul of the same values."""
    gate = dict(
        axes=(in_axis, "heads"),
        kernel_init=nnx.initializers.zeros,
        use_bias=True,
        dtype=None,
        preferred_element_type=jnp.float32,
        param_dtype=param_dtype,
        rngs=rngs,
    )
    nh = config.num_heads
    igate = dense(in_features, nh, bias_init=nnx.initializers.constant(config.igate_bias_init), **gate)
    fgate = dense(in_features, nh, bias_init=linspace_init(config.fgate_bias_min, config.fgate_bias_max), **gate)
    return igate, fgate


def soft_cap(x: jax.Array, cap: float | None) -> jax.Array:
    """``cap * tanh(x / cap)``; identity when ``cap`` is None."""
    return x if cap is None else cap * jnp.tanh(x / cap)
