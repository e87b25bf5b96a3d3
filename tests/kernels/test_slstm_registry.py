"""sLSTM kernel registry and config key: names, "auto" without a GPU, errors naming the problem, and the
scan backend's input checks."""

import re

import jax
import jax.numpy as jnp
import pytest

from xlstm_flax.kernels import slstm
from xlstm_flax.kernels.registry import triton_usable
from xlstm_flax.kernels.slstm.reference import slstm_scan
from xlstm_flax.layers import sLSTMLayerConfig


def test_names_and_lookup():
    assert slstm.available_slstm_kernels() == ["recurrent--jax", "recurrent--triton"]
    assert slstm.get_slstm_kernel("recurrent--jax") is slstm_scan


def test_auto_is_the_scan_without_a_gpu():
    if triton_usable():
        pytest.skip("a GPU with jax-triton is visible")
    assert slstm.resolve_slstm_kernel_name("auto") == "recurrent--jax"
    assert slstm.get_slstm_kernel("auto") is slstm_scan


def test_unknown_names_are_rejected():
    with pytest.raises(ValueError, match=re.escape("unknown sLSTM kernel 'chunkwise--jax'; available: recurrent--jax")):
        slstm.get_slstm_kernel("chunkwise--jax")
    with pytest.raises(ValueError, match=re.escape("sLSTMLayerConfig.kernel: unknown sLSTM kernel 'fused'")):
        sLSTMLayerConfig(kernel="fused")
    assert sLSTMLayerConfig(kernel="recurrent--triton").kernel == "recurrent--triton"  # valid without a GPU


def test_scan_checks_initial_states():
    pre = jax.ShapeDtypeStruct((2, 3, 4, 2, 8), jnp.float32)
    recurrent = jax.ShapeDtypeStruct((4, 2, 8, 8), jnp.float32)
    bad = slstm.States(*(jax.ShapeDtypeStruct((2, 2, 8), jnp.float32),) * 3, jax.ShapeDtypeStruct((2, 8), jnp.float32))
    with pytest.raises(ValueError, match=re.escape("recurrent--jax: initial state h must be (2, 2, 8), got (2, 8)")):
        jax.eval_shape(slstm_scan, pre, recurrent, bad)


def test_scan_checks_restarts():
    """The layer's packed-sequence path: restarts (B, S) bool, with the fresh states to restart from."""
    pre = jax.ShapeDtypeStruct((2, 3, 4, 2, 8), jnp.float32)
    recurrent = jax.ShapeDtypeStruct((4, 2, 8, 8), jnp.float32)
    fresh = slstm.States(*(jax.ShapeDtypeStruct((2, 2, 8), jnp.float32),) * 4)
    swapped = jax.ShapeDtypeStruct((3, 2), jnp.bool_)
    with pytest.raises(ValueError, match=re.escape("recurrent--jax: restarts must be bool (B, S) = (2, 3), got bool")):
        jax.eval_shape(lambda p, r, s: slstm_scan(p, r, restarts=s, fresh=fresh), pre, recurrent, swapped)
    restarts = jax.ShapeDtypeStruct((2, 3), jnp.bool_)
    with pytest.raises(ValueError, match="recurrent--jax: restarts needs fresh"):
        jax.eval_shape(lambda p, r, s: slstm_scan(p, r, restarts=s), pre, recurrent, restarts)
