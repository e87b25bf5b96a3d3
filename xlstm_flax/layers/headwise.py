"""Block-diagonal (head-wise) linear map: each of NH heads has its own (DIN/NH, DOUT/NH) matrix."""

import jax
import jax.numpy as jnp
from flax import nnx

from ..sharding import param
from .init import small_init


class HeadwiseLinear(nnx.Module):
    """x (..., DIN) -> (..., DOUT) with a block-diagonal kernel (NH, DIN/NH, DOUT/NH), no bias."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        num_heads: int,
        *,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        if in_features % num_heads or out_features % num_heads:
            raise ValueError(
                f"HeadwiseLinear: in_features={in_features} and out_features={out_features} "
                f"must be divisible by num_heads={num_heads}"
            )
        self.num_heads, self.dtype = num_heads, dtype
        din, dout = in_features // num_heads, out_features // num_heads
        self.kernel = param(small_init(din)(rngs.params(), (num_heads, din, dout), param_dtype), "heads", None, None)

    def __call__(self, x: jax.Array) -> jax.Array:
        xh = x.astype(self.dtype).reshape(*x.shape[:-1], self.num_heads, -1)
        y = jnp.einsum("...hi,hio->...ho", xh, self.kernel[...].astype(self.dtype))
        return y.reshape(*x.shape[:-1], -1)
