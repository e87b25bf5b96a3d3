"""The Triton step kernel ("step--triton") on a CUDA GPU, as decoding runs it: a scan over tokens at the
xLSTM-7B head dims, C updated in place, against the float64 reference (``pytest -m gpu``)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.kernels.compare import assert_close, reference_outputs
from tests.reference import random_inputs
from xlstm_flax.kernels import get_kernel
from xlstm_flax.kernels.registry import triton_usable

pytestmark = pytest.mark.gpu

if not triton_usable():
    pytest.skip("needs a CUDA GPU with jax_triton", allow_module_level=True)

STATES = ("c_initial", "n_initial", "m_initial")


def _scan_steps(name, x):
    """h (B, NH, S, DHV) and the last state from a lax.scan of the step kernel over S tokens."""
    kernel = get_kernel(name)

    def body(state, inputs):
        h, state = kernel(*inputs, *state)
        return state, h

    inputs = tuple(jnp.moveaxis(x[key], 2, 0) for key in "qkvif")
    state, hs = jax.jit(lambda inputs, state: jax.lax.scan(body, state, inputs))(inputs, tuple(x[k] for k in STATES))
    return jnp.moveaxis(hs, 0, 2), state


# fp32: 2e-5 (as the step--jax loop on the CPU); bf16 inputs: h rounds to bf16 each step (1e-2), the
# states stay fp32 from the same bf16 values (2e-5)
@pytest.mark.parametrize("dtype, tol_h", [(jnp.float32, 2e-5), (jnp.bfloat16, 1e-2)])
@pytest.mark.parametrize("B", [2, 8])
def test_decode_scan_matches_float64_reference(dtype, tol_h, B):
    x = random_inputs(jax.random.PRNGKey(71 + B), B=B, NH=8, S=12, DHQK=256, DHV=512, dtype=dtype, with_states=True)
    h, state = _scan_steps("step--triton", x)
    expected_h, expected_state = reference_outputs(x)
    assert_close(h, expected_h, tol_h, f"{jnp.dtype(dtype).name} h")
    for name, a, e in zip("cnm", state, expected_state):
        assert_close(a, e, 2e-5, f"{jnp.dtype(dtype).name} last {name}")


def test_the_caller_keeps_its_state():
    """Without donation XLA copies C before the in-place update: the input array is unchanged."""
    x = random_inputs(jax.random.PRNGKey(79), B=2, NH=8, S=1, DHQK=256, DHV=512, with_states=True)
    before = np.array(x["c_initial"])
    _, (c, _, _) = jax.jit(get_kernel("step--triton"))(*(x[k][:, :, 0] for k in "qkvif"), *(x[k] for k in STATES))
    np.testing.assert_array_equal(np.asarray(x["c_initial"]), before)
    assert not np.array_equal(np.asarray(c), before)
