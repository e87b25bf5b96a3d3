"""Pieces shared by the Triton forward and backward: block-size rules, padded head dims, dtype rules, dot
precision, the chunk-local log-forget cumsum and launch-geometry helpers (no kernels, no launches)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .. import common

KERNEL_NAME = "chunkwise--triton"
INPUT_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)
MIN_BLOCK = common.MIN_CHUNK  # the smallest tl.dot tile
MAX_CHUNK = 1024


def next_pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1)."""
    return 1 << max(n - 1, 0).bit_length()


def is_pow2(n) -> bool:
    return isinstance(n, int) and n > 0 and n & (n - 1) == 0


def check_power_of_two(name: str, value, low: int, high: int) -> None:
    if not is_pow2(value) or not low <= value <= high:
        raise ValueError(f"{name}={value!r} must be a power of two in [{low}, {high}]")


def check_int_range(name: str, value, low: int, high: int) -> None:
    if not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name}={value!r} must be an int in [{low}, {high}]")


def padded_dim(size: int) -> int:
    """A head dim padded to the tile the kernels use: a power of two >= MIN_BLOCK."""
    return max(MIN_BLOCK, next_pow2(size))


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def check_dtypes(matQ, output_dtype) -> None:
    """ValueError unless q's dtype and ``output_dtype`` are float32, bfloat16 or float16."""
    if not any(matQ.dtype == d for d in INPUT_DTYPES):
        raise ValueError(f"{KERNEL_NAME} supports q/k/v in float32, bfloat16, float16; got {matQ.dtype}")
    if not any(jnp.dtype(output_dtype) == d for d in INPUT_DTYPES):
        raise ValueError(f"output_dtype must be float32, bfloat16 or float16; got {output_dtype}")


def dot_precision(dtype) -> str:
    """fp32 operands use three TF32 products (about fp32 accuracy, on tensor cores); others ignore it."""
    return "tf32x3" if dtype == jnp.float32 else "tf32"


def chunk_log_forget_cumsum(vecF: jax.Array, chunk_size: int, resets: jax.Array | None = None) -> jax.Array:
    """``vecB (B, NH, S)`` fp32: the chunk-local log-forget cumsum, the cumulative sum of log(sigmoid(f))
    restarted every ``chunk_size`` steps and, with ``resets`` (B, S) bool, at every segment start."""
    B, NH, S = vecF.shape
    logf = common.log_sigmoid_fp32(vecF).astype(jnp.float32).reshape(B, NH, S // chunk_size, chunk_size)
    if resets is None:
        return jnp.cumsum(logf, axis=-1).reshape(B, NH, S)
    return common.segmented_cumsum(logf, resets.reshape(B, 1, S // chunk_size, chunk_size)).reshape(B, NH, S)


def chunk_segment_counter(resets: jax.Array | None, NH: int, chunk_size: int) -> jax.Array | None:
    """``vecSeg (B, NH, S)`` int32 from ``resets`` (B, S) bool: the number of segment starts in the step's
    chunk of ``chunk_size`` steps up to and including the step (docs/math.md 5.3); None stays None."""
    if resets is None:
        return None
    B, S = resets.shape
    counter = jnp.cumsum(resets.reshape(B, 1, S // chunk_size, chunk_size), axis=-1, dtype=jnp.int32)
    return jnp.broadcast_to(counter, (B, NH, S // chunk_size, chunk_size)).reshape(B, NH, S)


def heads_flat(x: jax.Array) -> jax.Array:
    """(B, NH, ...) -> (B * NH, ...): the backward kernels' layout."""
    return x.reshape(-1, *x.shape[2:])
