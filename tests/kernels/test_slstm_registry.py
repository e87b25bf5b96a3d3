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


def _inputs():
    """Gate inputs (B, S, NH, DH) = (2, 3, 2, 8), bias and R as shapes."""
    sds = jax.ShapeDtypeStruct
    gates = slstm.GateInputs(*(sds((2, 3, 2, 8), jnp.bfloat16),) * 4)
    return gates, sds((4, 2, 8), jnp.float32), sds((4, 2, 8, 8), jnp.float32)


def test_scan_checks_initial_states_and_bias():
    gates, bias, recurrent = _inputs()
    bad = slstm.States(*(jax.ShapeDtypeStruct((2, 2, 8), jnp.float32),) * 3, jax.ShapeDtypeStruct((2, 8), jnp.float32))
    with pytest.raises(ValueError, match=re.escape("recurrent--jax: initial state h must be (2, 2, 8), got (2, 8)")):
        jax.eval_shape(slstm_scan, gates, bias, recurrent, bad)
    with pytest.raises(ValueError, match=re.escape("recurrent--jax: bias must be (4, 2, 8) for gate inputs")):
        jax.eval_shape(slstm_scan, gates, jax.ShapeDtypeStruct((4, 8), jnp.float32), recurrent)


def test_scan_checks_restarts():
    """The layer's packed-sequence path: restarts (B, S) bool, with the fresh states to restart from."""
    gates, bias, recurrent = _inputs()
    fresh = slstm.States(*(jax.ShapeDtypeStruct((2, 2, 8), jnp.float32),) * 4)
    swapped = jax.ShapeDtypeStruct((3, 2), jnp.bool_)
    with pytest.raises(ValueError, match=re.escape("recurrent--jax: restarts must be bool (B, S) = (2, 3), got bool")):
        jax.eval_shape(lambda g, r, s: slstm_scan(g, bias, r, restarts=s, fresh=fresh), gates, recurrent, swapped)
    restarts = jax.ShapeDtypeStruct((2, 3), jnp.bool_)
    with pytest.raises(ValueError, match="recurrent--jax: restarts needs fresh"):
        jax.eval_shape(lambda g, r, s: slstm_scan(g, bias, r, restarts=s), gates, recurrent, restarts)
