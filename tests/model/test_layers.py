"""Layers against independent float64 numpy references (fresh random inputs and parameters)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.reference import mlstm_reference
from xlstm_flax.layers import (
    CausalConv1d,
    FFNConfig,
    GatedFFN,
    MultiHeadNorm,
    make_norm,
    mLSTMLayer,
    mLSTMLayerConfig,
    mLSTMPaperLayer,
    sLSTMLayer,
    sLSTMLayerConfig,
)

from .helpers import jit_call, perturb_params


def np64(x):
    return np.asarray(x, np.float64)


def normal(seed, shape, scale=1.0):
    return scale * jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def test_causal_conv_matches_numpy_and_carries_its_buffer():
    conv = perturb_params(CausalConv1d(6, 4, rngs=nnx.Rngs(0)), 1)
    x = normal(2, (2, 9, 6))
    y, state = jit_call(conv, x)
    w, b, xn = np64(conv.kernel[...]), np64(conv.bias[...]), np64(x)
    xp = np.concatenate([np.zeros((2, 3, 6)), xn], axis=1)
    expected = b + sum(xp[:, j : j + 9] * w[j] for j in range(4))
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)  # fp32 vs float64
    np.testing.assert_allclose(state, xn[:, -3:], rtol=0, atol=0)
    # the same sequence in pieces of 2, 1 and 6 steps with the buffer carried across
    pieces, carried = [], None
    for lo, hi in ((0, 2), (2, 3), (3, 9)):
        piece, carried = jit_call(conv, x[:, lo:hi], carried)
        pieces.append(piece)
    np.testing.assert_allclose(jnp.concatenate(pieces, 1), y, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["rmsnorm", "layernorm"])
def test_norm_matches_numpy_and_reduces_in_fp32(kind):
    norm = perturb_params(make_norm(kind, 8, eps=1e-6), 3)
    x = normal(4, (3, 8), scale=5.0) + 2.0
    xn = np64(x)
    if kind == "layernorm":
        xn = xn - xn.mean(-1, keepdims=True)
    expected = xn / np.sqrt((xn**2).mean(-1, keepdims=True) + 1e-6) * np64(norm.scale[...])
    np.testing.assert_allclose(norm(x), expected, rtol=1e-5, atol=1e-5)
    y16 = norm(x.astype(jnp.bfloat16))
    assert y16.dtype == jnp.bfloat16
    np.testing.assert_allclose(np64(y16), expected, rtol=0.05, atol=0.05)  # bf16 output rounding


def test_multihead_norm_normalises_each_head():
    norm = perturb_params(MultiHeadNorm(3, 4), 5)
    x = normal(6, (2, 5, 3, 4), scale=3.0)
    xn = np64(x)
    xc = xn - xn.mean(-1, keepdims=True)
    expected = (xc / np.sqrt((xc**2).mean(-1, keepdims=True) + 1e-6)).reshape(2, 5, 12)
    np.testing.assert_allclose(norm(x), expected * np64(norm.scale[...]), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="MultiHeadNorm expects"):
        norm(x.reshape(2, 5, 4, 3))


def test_gated_ffn_is_swiglu_with_rounded_width():
    ffn = GatedFFN(32, FFNConfig(), num_blocks=2, rngs=nnx.Rngs(0))
    assert ffn.proj_up.kernel.shape == (32, 128)  # 32 * 2.667 = 85.3 -> 128
    x = normal(7, (2, 32))
    g, u, d = (np64(m.kernel[...]) for m in (ffn.proj_up_gate, ffn.proj_up, ffn.proj_down))
    a = np64(x) @ g
    expected = (a * sigmoid(a) * (np64(x) @ u)) @ d
    np.testing.assert_allclose(ffn(x), expected, rtol=1e-5, atol=1e-6)


def slstm_reference(pre, recurrent, h0):
    """Unstabilised float64 sLSTM: pre (S, 4, NH, DH) input parts of the i, f, z, o gates (with
    bias), recurrent (4, NH, DH, DH); returns h (S, NH, DH)."""
    c, n, h = np.zeros_like(h0), np.zeros_like(h0), h0
    out = []
    for p in pre:
        g = p + np.einsum("hd,ghde->ghe", h, recurrent)
        i, f, z, o = np.exp(g[0]), sigmoid(g[1]), np.tanh(g[2]), sigmoid(g[3])
        c, n = f * c + i * z, f * n + i
        h = o * c / n
        out.append(h)
    return np.stack(out)


def test_slstm_matches_the_unstabilised_recurrence():
    layer = perturb_params(
        sLSTMLayer(8, sLSTMLayerConfig(num_heads=2, conv_kernel_size=0), num_blocks=1, rngs=nnx.Rngs(0)), 1
    )
    x = normal(8, (1, 7, 8))
    y, state = jit_call(layer, x, return_state=True)
    # rebuild the gate inputs from the parameters, independently of the layer code
    xn = np64(x)[0].reshape(7, 2, 4)
    pre = np.stack(
        [
            np.einsum("shi,hio->sho", xn, np64(getattr(layer, g).kernel[...]))
            for g in ("igate", "fgate", "zgate", "ogate")
        ],
        axis=1,
    ) + np64(layer.bias[...])
    h = slstm_reference(pre, np64(layer.recurrent_kernel[...]), np.zeros((2, 4)))
    hc = h - h.mean(-1, keepdims=True)
    expected = (hc / np.sqrt((hc**2).mean(-1, keepdims=True) + 1e-6)).reshape(7, 8) * np64(layer.group_norm.scale[...])
    np.testing.assert_allclose(y[0], expected, rtol=1e-4, atol=1e-4)  # fp32 scan vs float64
    np.testing.assert_allclose(state.h[0], h[-1], rtol=1e-4, atol=1e-5)


def test_xlstm7b_layer_matches_the_published_math():
    """q, k, v, o projections; soft-capped fp32 gates; mLSTM (float64 reference); per-head
    LayerNorm; h * sigmoid(o); out_proj."""
    cfg = mLSTMLayerConfig(num_heads=2, kernel="chunkwise--jax", chunk_size=4, dim_round_to=8, gate_soft_cap=2.0)
    layer = perturb_params(mLSTMLayer(16, cfg, num_blocks=2, rngs=nnx.Rngs(0)), 2, scale=0.5)
    x = normal(9, (2, 6, 16))
    y, _ = jit_call(layer, x)
    xn = np64(x)

    def proj(linear):
        out = xn @ np64(linear.kernel[...])
        return out if linear.bias is None else out + np64(linear.bias[...])

    def heads(t):
        return t.reshape(2, 6, 2, -1).transpose(0, 2, 1, 3)

    i = (2.0 * np.tanh(proj(layer.igate_preact) / 2.0)).transpose(0, 2, 1)
    f = (2.0 * np.tanh(proj(layer.fgate_preact) / 2.0)).transpose(0, 2, 1)
    with jax.enable_x64():
        h, *_ = jax.jit(mlstm_reference)(heads(proj(layer.q)), heads(proj(layer.k)), heads(proj(layer.v)), i, f)
        h = np64(h).transpose(0, 2, 1, 3)
    hc = h - h.mean(-1, keepdims=True)
    h = (hc / np.sqrt((hc**2).mean(-1, keepdims=True) + 1e-6)).reshape(2, 6, -1)
    h = h * np64(layer.multihead_norm.scale[...]) * sigmoid(proj(layer.ogate_preact))
    expected = h @ np64(layer.out_proj.kernel[...])
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)  # fp32 layer vs float64 math


@pytest.mark.parametrize("variant", ["xlstm7b", "paper"])
def test_bf16_gate_preactivations_are_fp32_sums_of_exact_products(variant):
    """With bf16 x and bf16 parameters the igate / fgate projections return fp32 whose every product
    is exact (bf16 x bf16 fits in fp32) and whose sums are fp32: they match the float64 matmul of the
    same bf16 values to fp32 rounding (rtol 1e-5 on pre-activations of order 1-10), far below bf16's
    3.9e-3 spacing, which a bf16 output or bf16 accumulation would show."""
    cfg = mLSTMLayerConfig(num_heads=2, dim_round_to=8, qkv_proj_blocksize=4, kernel="chunkwise--jax", chunk_size=4)
    common = dict(num_blocks=1, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    if variant == "xlstm7b":
        layer = perturb_params(mLSTMLayer(64, cfg, **common), 3, scale=1.0)
        gates, width = (layer.igate_preact, layer.fgate_preact), 64
    else:
        layer = perturb_params(mLSTMPaperLayer(64, cfg, **common), 3, scale=1.0)
        gates, width = (layer.igate, layer.fgate), layer.igate.kernel.shape[0]
    x = normal(4, (2, 5, width), scale=3.0).astype(jnp.bfloat16)
    for linear in gates:
        got = jax.jit(lambda x, linear=linear: linear(x))(x)
        assert got.dtype == jnp.float32
        expected = np64(x) @ np64(linear.kernel[...]) + np64(linear.bias[...])
        np.testing.assert_allclose(np64(got), expected, rtol=1e-5, atol=1e-5)
