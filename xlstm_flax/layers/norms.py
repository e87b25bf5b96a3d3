"""RMSNorm, LayerNorm and the per-head (multi-head / group) norm; statistics always in fp32.

Shapes: ``Norm``: x (..., D) -> (..., D); ``MultiHeadNorm``: x (..., NH, DH) -> (..., NH * DH).
Outputs keep the input dtype. The learnable scale is a ``Param`` named ``scale``, the optional
additive ``bias`` (``use_bias``) one named ``bias``.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from ..sharding import param

NORM_KINDS = ("rmsnorm", "layernorm")


def normalize(x: jax.Array, *, center: bool, eps: float) -> jax.Array:
    """Zero-mean (if ``center``) unit-RMS over the last axis, computed in fp32."""
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    if center:
        x = x - jnp.mean(x, axis=-1, keepdims=True)
    return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps)


def _scale_and_shift(y: jax.Array, scale: nnx.Param, bias: nnx.Param | None) -> jax.Array:
    y = y * scale[...]
    return y if bias is None else y + bias[...]


class Norm(nnx.Module):
    """RMSNorm (``center=False``) or LayerNorm (``center=True``) over the last axis; scale and an
    optional bias."""

    def __init__(self, dim: int, *, center: bool, eps: float = 1e-6, use_bias: bool = False, param_dtype=jnp.float32):
        self.center, self.eps = center, eps
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype))
        self.bias = nnx.Param(jnp.zeros((dim,), param_dtype)) if use_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        y = normalize(x, center=self.center, eps=self.eps)
        return _scale_and_shift(y, self.scale, self.bias).astype(x.dtype)


def make_norm(kind: str, dim: int, *, eps: float, use_bias: bool = False, param_dtype=jnp.float32) -> Norm:
    """``kind`` is "rmsnorm" or "layernorm"."""
    if kind not in NORM_KINDS:
        raise ValueError(f"unknown norm kind {kind!r}; expected one of {NORM_KINDS}")
    return Norm(dim, center=kind == "layernorm", eps=eps, use_bias=use_bias, param_dtype=param_dtype)


class MultiHeadNorm(nnx.Module):
    """Normalises each head separately (group norm), then applies one scale over all NH * DH features.

    This is the xLSTM-7B ``multihead_norm`` (a per-head LayerNorm with weight, and a bias when the
    layer uses biases) and the paper's multi-head group norm. x (..., NH, DH) -> (..., NH * DH) in x's
    dtype.
    """

    def __init__(
        self, num_heads: int, head_dim: int, *, eps: float = 1e-6, use_bias: bool = False, param_dtype=jnp.float32
    ):
        self.num_heads, self.head_dim, self.eps = num_heads, head_dim, eps
        self.scale = param(jnp.ones((num_heads * head_dim,), param_dtype), "heads")
        self.bias = param(jnp.zeros((num_heads * head_dim,), param_dtype), "heads") if use_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.shape[-2:] != (self.num_heads, self.head_dim):
            raise ValueError(f"MultiHeadNorm expects x (..., {self.num_heads}, {self.head_dim}), got {tuple(x.shape)}")
        y = normalize(x, center=True, eps=self.eps)
        return _scale_and_shift(y.reshape(*x.shape[:-2], -1), self.scale, self.bias).astype(x.dtype)
