"""The scan backend with a bf16 recurrent kernel sums R's gradient over the steps in fp32: at S = 512 its
dR is within 1e-2 of a float64 scan that rounds h to bf16 the same way (measured 3e-3; summed in bf16,
as when the scan closed over the bf16 R, it was 5.5e-2). Error measure: max |error| / max |reference|."""

import jax
import jax.numpy as jnp
import numpy as np

from tests.kernels.compare import assert_close
from tests.kernels.slstm_checks import BIAS, check_against_reference, make_inputs, random_cotangents
from xlstm_flax.kernels.slstm import GateInputs, States, gate_preactivations, get_slstm_kernel
from xlstm_flax.kernels.slstm.reference import cell_step


def _faithful_float64_gradients(pre, recurrent_kernel, weights):
    """Gradients of sum(h * weights) from a float64 scan whose products take h rounded to bf16."""
    with jax.enable_x64():
        pre, recurrent_kernel, weights = (
            jnp.asarray(np.asarray(x, np.float32), jnp.float64) for x in (pre, recurrent_kernel, weights)
        )
        B, S, _, NH, DH = pre.shape
        zeros = jnp.zeros((B, NH, DH), jnp.float64)
        initial = States(zeros, zeros, jnp.full_like(zeros, -1e30), zeros)

        def loss(pre, recurrent_kernel):
            def step(state, pre_t):
                new = cell_step(recurrent_kernel, state, pre_t, jnp.bfloat16)
                return new, new.h

            _, hs = jax.lax.scan(step, initial, pre.swapaxes(0, 1))
            return jnp.sum(hs.swapaxes(0, 1) * weights)

        return [np.asarray(g) for g in jax.grad(loss, argnums=(0, 1))(pre, recurrent_kernel)]


def test_bf16_recurrent_kernel_gradient_sums_in_fp32():
    """fp32 gate inputs and bias: d gate is the gradient of the pre-activations, d bias its sum over (b, t)."""
    args = make_inputs(3, 4, 512, 2, 64, jnp.bfloat16, initial=False)
    gates, bias, recurrent_kernel = GateInputs(*args[:BIAS]), args[BIAS], args[BIAS + 1]
    weights = jax.random.normal(jax.random.key(4), (4, 512, 2, 64))
    scan = get_slstm_kernel("recurrent--jax")
    d_gates, d_bias, d_recurrent = jax.grad(lambda g, b, r: jnp.sum(scan(g, b, r)[0] * weights), argnums=(0, 1, 2))(
        gates, bias, recurrent_kernel
    )
    assert d_recurrent.dtype == jnp.bfloat16
    want_pre, want_recurrent = _faithful_float64_gradients(gate_preactivations(gates, bias), recurrent_kernel, weights)
    assert_close(jnp.stack(d_gates, axis=2), want_pre, 1e-2, "d gates")
    assert_close(d_bias, want_pre.sum(axis=(0, 1)), 1e-2, "d bias")
    assert_close(d_recurrent, want_recurrent, 1e-2, "d recurrent_kernel")


def test_bf16_scan_passes_the_shared_kernel_check_at_a_near_tie_shape():
    """check_against_reference at bf16 (h-only weights, see its docstring) on the shape where weighing the
    last c, n, m made even the scan miss by 0.26 (a flipped stabiliser tie): values and every gradient
    within 3e-2, the bf16 bound the GPU tests use for the Triton kernel (measured <= 4e-3)."""
    args = make_inputs(264, 64, 128, 8, 64, jnp.bfloat16, initial=True)
    check_against_reference(get_slstm_kernel("recurrent--jax"), args, random_cotangents(265, args[0]), 3e-2, 3e-2)
