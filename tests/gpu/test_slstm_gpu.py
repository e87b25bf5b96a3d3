"""The fused sLSTM Triton kernels on a CUDA GPU through jax-triton (``pytest -m gpu``): values, last state
and gradients of every input (the four gate inputs, bias, R, c0, n0, m0, h0) vs autodiff of the float64
scan, at the 350m
xLSTM[7:1] layer's head shape (4 heads of 256) and at odd shapes.

Error measure: max |error| / max |reference| per array (tests/kernels/compare.py).
* fp32 R (3xTF32 dots, about fp32 accuracy): values <= 1e-4, gradients <= 1e-3 (the mLSTM's fp32 bound).
* bf16 R: h_{t-1} and dg_t are rounded to bf16 (relative step 4e-3) before each product: <= 3e-2,
  the mLSTM GPU tests' bf16 bound.
* The recurrent kernel's gradient alone (slstm_dr at its defaults) against a float64 sum: bf16 R (dg
  in two bf16 parts, measured 1.7e-5 at B = 16, S = 2048) <= 5e-5; fp32 R (3xTF32) <= 1e-5; the dg it
  passes on equal to dg rounded to the gate inputs' dtype.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.kernels.compare import assert_close
from tests.kernels.slstm_checks import (
    case_id,
    check_against_reference,
    check_dr_followers,
    check_triton_case,
    make_inputs,
    random_cotangents,
)
from tests.model.helpers import perturb_params
from xlstm_flax.kernels.registry import triton_usable
from xlstm_flax.kernels.slstm import GateInputs, get_slstm_kernel, resolve_slstm_kernel_name, triton_launch
from xlstm_flax.kernels.slstm.common import Dims
from xlstm_flax.layers import sLSTMLayer, sLSTMLayerConfig

pytestmark = pytest.mark.gpu
if not triton_usable():
    pytest.skip("needs a CUDA GPU with jax_triton", allow_module_level=True)

TOL = {jnp.float32: (1e-4, 1e-3), jnp.bfloat16: (3e-2, 3e-2)}

CASES = [
    # (R dtype, B, S, NH, DH, initial states, tuning); the defaults at B = 16, DH = 256 are split 16 in both
    # walks with R's slice resident (triton_resident.py), the forward's four gate products joined in one dot
    (jnp.float32, 16, 256, 4, 256, True, {}),
    (jnp.bfloat16, 16, 256, 4, 256, True, {}),
    (jnp.bfloat16, 32, 256, 4, 256, True, {}),  # block_b 32: split 16, gate products apart
    (jnp.bfloat16, 16, 256, 4, 512, True, {}),  # split 16 in both walks, R resident
    (jnp.bfloat16, 16, 256, 4, 192, True, {}),  # programs with only padding columns: 2 forward, 4 backward
    (jnp.bfloat16, 16, 512, 4, 256, False, dict(block_dh=128, block_k=32, num_warps=8)),  # split 2, streaming
    (jnp.float32, 37, 128, 2, 48, True, dict(block_b=32, block_dh=16)),
    (jnp.bfloat16, 64, 128, 8, 64, True, dict(block_b=64)),
    (jnp.bfloat16, 16, 512, 4, 256, True, dict(split=8, resident=False)),  # streaming R, group barriers
    (jnp.bfloat16, 16, 512, 4, 256, True, dict(split=4, block_dh=64, num_warps=8, resident=True)),
    (jnp.float32, 37, 128, 2, 48, True, dict(split=2, block_dh=16, block_k=16)),
    (jnp.float32, 37, 128, 2, 48, True, dict(split=2, resident=True)),  # padded rows and columns
    (jnp.bfloat16, 37, 128, 2, 48, True, dict(split=3, block_dh=16, block_k=16, resident=True)),  # split 3
    # split 5 of 16 columns: parts 3 and 4 only padding, parts padded to 8
    (jnp.bfloat16, 37, 128, 2, 48, True, dict(split=5, block_dh=16, block_k=16, resident=True)),
]


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_triton_slstm_matches_reference_on_gpu(case):
    check_triton_case(case, TOL)


@pytest.mark.parametrize("dtype, tol", [(jnp.bfloat16, 5e-5), (jnp.float32, 1e-5)], ids=["bf16", "fp32"])
def test_recurrent_kernel_gradient_at_its_defaults_matches_float64(dtype, tol):
    """slstm_dr with its default tiles and row parts for this GPU, S = 1000 (not a multiple of the
    64-step blocks), DH = 200 (padded), against the float64 sum on the CPU of h_{t-1}^T dg_t."""
    B, S, NH, DH = 8, 1000, 2, 200
    ks = jax.random.split(jax.random.key(9), 3)
    h_history = jax.random.normal(ks[0], (B, S + 1, NH, DH), jnp.float32)
    dg = jax.random.normal(ks[1], (B, S, 4, NH, DH), jnp.float32)
    recurrent = (jax.random.normal(ks[2], (4, NH, DH, DH)) / DH**0.5).astype(dtype)
    got, d_gates = triton_launch.slstm_dr(h_history, dg, recurrent, Dims(B, S, NH, DH), dtype)
    h = np.asarray(h_history[:, :S].astype(dtype).astype(jnp.float32), np.float64)
    want = np.einsum("btnd,btgne->gnde", h, np.asarray(dg, np.float64))
    assert_close(got, want, tol, "dR")
    np.testing.assert_array_equal(np.stack(d_gates, axis=2), np.asarray(dg.astype(dtype)))


@pytest.mark.parametrize(
    "dims, dtype, tol, tuning",
    [
        (Dims(16, 1000, 4, 256), jnp.bfloat16, 1e-4, {}),
        (Dims(16, 1000, 4, 256), jnp.float32, 2e-5, {}),
        (Dims(32, 1000, 2, 256), jnp.bfloat16, 1e-4, dict(block_b=16)),  # two batch blocks
    ],
    ids=["350m-bf16", "350m-fp32", "two-batch-blocks"],
)
def test_dr_followers_match_the_dr_kernel_after_the_walk(dims, dtype, tol, tuning):
    """The backward with dR followers and this GPU's other defaults, S = 1000 (not a multiple of the followers'
    64-step blocks), at the 350m layer's head shape and with two batch blocks: dR within ``tol`` of the dR
    kernel's after the walk. The followers run the dR kernel's own per-block products (triton_dr._dr_block)
    in another order, so each sum has the kernel's error, bounded against float64 in the test above by 5e-5
    (bf16 R) and 1e-5 (fp32 R), and they differ by at most twice that (H100, bf16: 3.6e-5 apart)."""
    check_dr_followers(17, dims, dtype, tol, **tuning)


def test_bf16_gate_inputs_with_fp32_recurrent_kernel():
    """bf16 gate inputs, fp32 R, at the 350m layer's head shape and defaults: values and the non-gate
    gradients within the fp32 bounds, the gate inputs' bf16 cotangents within bf16's unit roundoff
    (2^-8 = 3.9e-3, as in the interpreter test) plus the fp32 bound: 5e-3."""
    args = make_inputs(13, 16, 256, 4, 256, jnp.float32, gate_dtype=jnp.bfloat16)
    kernel = get_slstm_kernel("recurrent--triton")
    check_against_reference(kernel, args, random_cotangents(14, args[0]), *TOL[jnp.float32], tol_gate_grads=5e-3)


def test_split_that_cannot_be_resident_is_refused():
    args = make_inputs(0, 64, 4, 8, 64)
    with pytest.raises(ValueError, match="split=32 launches 1024 programs"):
        get_slstm_kernel("recurrent--triton")(GateInputs(*args[:4]), args[4], args[5], split=32, block_b=16)


def _layer_outputs_and_gradients(kernel: str, x, weights):
    config = sLSTMLayerConfig(num_heads=4, kernel=kernel)
    layer = perturb_params(sLSTMLayer(1024, config, num_blocks=1, dtype=jnp.bfloat16, rngs=nnx.Rngs(0)), 1, 0.05)

    def loss(layer):
        y = layer(x)[0]
        return jnp.sum(y.astype(jnp.float32) * weights), y

    (_, y), grads = nnx.jit(nnx.value_and_grad(loss, has_aux=True))(layer)
    return y, nnx.to_pure_dict(grads)


def test_bf16_layer_with_triton_kernel_matches_scan_layer():
    """The 350m xLSTM[7:1] sLSTM layer (D = 1024, 4 heads, bf16 compute): output and every parameter
    gradient of the Triton layer within 3e-2 (the bf16 bound) of the scan layer's."""
    x = jax.random.normal(jax.random.key(5), (4, 512, 1024), jnp.bfloat16)
    weights = jax.random.normal(jax.random.key(6), (4, 512, 1024), jnp.float32)
    y_ref, grads_ref = _layer_outputs_and_gradients("recurrent--jax", x, weights)
    y, grads = _layer_outputs_and_gradients("recurrent--triton", x, weights)
    assert_close(y, y_ref, 3e-2, "y")
    for (path, g), g_ref in zip(jax.tree.leaves_with_path(grads), jax.tree.leaves(grads_ref)):
        assert_close(g, g_ref, 3e-2, f"grad {jax.tree_util.keystr(path)}")


def test_auto_runs_the_triton_kernel_on_a_gpu():
    assert resolve_slstm_kernel_name("auto") == "recurrent--triton"
