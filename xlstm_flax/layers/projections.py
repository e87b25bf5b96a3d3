"""Several ``nnx.Linear`` of one input, as one matmul over their joined kernels when the input has few rows.

With few rows (a decode step) a projection is bound by reading its kernel, and XLA launches one GEMM per
projection: each launch pays its ramp-up and tail. One matmul over the kernels joined along their output
axis reads the same bytes in one launch, and XLA's Triton GEMM reads the joined kernel in place when every
piece is a whole number of its column tiles (:data:`JOIN_WIDTH`); a narrower piece would make it copy the
joined kernel on every call. The narrow Linears (the gate projections, num_heads wide) therefore run as one
fp32 multiply-and-sum over their joined kernels instead, which XLA fuses into one reduction that reads the
kernels in place (a GEMM that narrow runs split along D, then sums the splits in a second kernel). That
sum is exact per product only for 16-bit values (an fp32 matmul on a GPU multiplies in TF32 by default),
so it serves only Linears whose input and kernel already have their 16-bit compute dtype. Each output
equals its Linear's up to the order of the fp32 sums: the product accumulates in fp32 and is rounded to the
Linear's output dtype, then its bias is added, as ``nnx.Linear`` does. With many rows (training, prefill),
fewer than two Linears of a kind, Linears computing in different dtypes, or a tensor-parallel mesh
(joining its split output axes would gather them), every Linear runs on its own.
"""

import math

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import dtypes

from ..sharding import TENSOR

# Up to this many rows a bf16 GEMM does at most 128 FLOP per weight byte read (2 per row and 2-byte weight),
# below the H100/H200 ridge point (160-200 with measured ceilings): the projections are bound by reading
# their kernels.
MAX_JOINED_ROWS = 128
# XLA (jaxlib 0.11) fuses a concatenated GEMM operand only when every piece's width is a multiple of 64
# (kMinConcatFragmentSize in xla/service/gpu/triton_tiling_propagation.cc; 128 in older versions).
JOIN_WIDTH = 64


def project(x: jax.Array, *linears: nnx.Linear) -> tuple[jax.Array, ...]:
    """x (..., D) -> ``(linear(x) for linear in linears)``, each (..., F_j); with at most
    :data:`MAX_JOINED_ROWS` rows the Linears whose width is a multiple of :data:`JOIN_WIDTH` run as one
    matmul, and those narrower than it whose input and kernel have their 16-bit compute dtype as one
    multiply-and-sum, each group when it holds at least two Linears computing in one dtype."""
    outputs = {}
    if math.prod(x.shape[:-1]) <= MAX_JOINED_ROWS and not _tensor_parallel():
        plain = [linear for linear in linears if _plain_matmul(linear)]
        wide = [linear for linear in plain if linear.out_features % JOIN_WIDTH == 0]
        narrow = [linear for linear in plain if linear.out_features < JOIN_WIDTH and _sums_exactly(x, linear)]
        for group, joined in ((wide, _joined_matmul), (narrow, _joined_sum)):
            compute = {_compute_dtype(x, linear) for linear in group}
            if len(group) >= 2 and len(compute) == 1:
                outputs.update(zip(map(id, group), joined(x, group, compute.pop())))
    return tuple(outputs[id(linear)] if id(linear) in outputs else linear(x) for linear in linears)


def _joined_matmul(x: jax.Array, linears: list[nnx.Linear], dtype) -> list[jax.Array]:
    """The Linears' outputs from one matmul in ``dtype``, whose output is their common output dtype (fp32
    when they differ, then rounded to each)."""
    out_dtypes = {jnp.dtype(linear.preferred_element_type or dtype) for linear in linears}
    out_dtype = out_dtypes.pop() if len(out_dtypes) == 1 else jnp.float32
    product = jnp.dot(x.astype(dtype), _joined_kernel(linears, dtype), preferred_element_type=out_dtype)
    return _split_outputs(product, linears, dtype)


def _joined_sum(x: jax.Array, linears: list[nnx.Linear], dtype) -> list[jax.Array]:
    """The Linears' outputs from one fp32 multiply-and-sum over D of x and their joined kernel (16-bit
    values: every product exact in fp32, as in the matmul)."""
    kernel = _joined_kernel(linears, dtype).astype(jnp.float32)
    product = jnp.sum(x.astype(jnp.float32)[..., :, None] * kernel, axis=-2)
    return _split_outputs(product, linears, dtype)


def _joined_kernel(linears: list[nnx.Linear], dtype) -> jax.Array:
    """(D, sum of the widths): the Linears' kernels in ``dtype``, side by side."""
    return jnp.concatenate([linear.kernel[...].astype(dtype) for linear in linears], axis=1)


def _split_outputs(product: jax.Array, linears: list[nnx.Linear], dtype) -> list[jax.Array]:
    """Each Linear's columns of ``product``, in its output dtype, plus its bias (in ``dtype``)."""
    outputs, start = [], 0
    for linear in linears:
        y = product[..., start : start + linear.out_features].astype(linear.preferred_element_type or dtype)
        start += linear.out_features
        outputs.append(y if linear.bias is None else y + linear.bias[...].astype(dtype))
    return outputs


def _plain_matmul(linear: nnx.Linear) -> bool:
    """Whether ``linear`` multiplies as the joined matmul does (default precision, dot_general and dtype
    promotion)."""
    return (
        type(linear) is nnx.Linear  # a subclass may compute more than the product
        and linear.precision is None
        and linear.dot_general is jax.lax.dot_general
        and linear.promote_dtype is dtypes.promote_dtype
    )


def _sums_exactly(x: jax.Array, linear: nnx.Linear) -> bool:
    """Whether x and ``linear``'s kernel both have its compute dtype and it is 16-bit (so the fp32
    multiply-and-sum rounds nothing the matmul does not)."""
    dtype = _compute_dtype(x, linear)
    return dtype.itemsize == 2 and x.dtype == linear.kernel[...].dtype == dtype


def _compute_dtype(x: jax.Array, linear: nnx.Linear):
    """The dtype ``linear(x)`` multiplies in (its ``dtype``, or the promoted one of x, kernel and bias)."""
    arrays = (x, linear.kernel[...]) + (() if linear.bias is None else (linear.bias[...],))
    return jnp.dtype(dtypes.canonicalize_dtype(*arrays, dtype=linear.dtype))


def _tensor_parallel() -> bool:
    mesh = jax.sharding.get_abstract_mesh()
    return not mesh.empty and dict(mesh.shape).get(TENSOR, 1) > 1
