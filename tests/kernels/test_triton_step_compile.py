"""``"step--triton"`` lowers for CUDA on the CPU machine (jax-triton down to PTX for sm_90a) at the xLSTM-7B
head dims and at small, non-power-of-two ones, in fp32, bf16 and fp16; bad inputs raise a one-line error
naming the problem before any launch. No GPU needed (docs/testing.md)."""

import jax
import jax.numpy as jnp
import pytest

from tests.kernels.lowering import lowered_triton_calls, skip_module_unless_lowerable

skip_module_unless_lowerable()

from xlstm_flax.kernels import get_kernel  # noqa: E402
from xlstm_flax.kernels.triton import launch  # noqa: E402
from xlstm_flax.kernels.triton.step import launch_step  # noqa: E402


def _shapes(dtype, B, NH, DHQK, DHV):
    struct = jax.ShapeDtypeStruct
    qk, gate = struct((B, NH, DHQK), dtype), struct((B, NH), jnp.float32)
    states = struct((B, NH, DHQK, DHV), jnp.float32), struct((B, NH, DHQK), jnp.float32), gate
    return qk, qk, struct((B, NH, DHV), dtype), gate, gate, *states


@pytest.mark.parametrize(
    "dtype, dims", [(jnp.bfloat16, (1, 8, 256, 512)), (jnp.float32, (2, 3, 48, 80)), (jnp.float16, (4, 2, 16, 32))]
)
def test_step_kernel_lowers_for_sm90(dtype, dims):
    (payload,) = lowered_triton_calls(lambda *a: launch_step(*a, qk_scale=0.125, eps=1e-6), *_shapes(dtype, *dims))
    assert b"step_kernel" in payload and b".target sm_90a" in payload


def _inputs(B=1, NH=2, DHQK=16, DHV=32, state_dtype=jnp.float32):
    x = [jnp.ones(s.shape, s.dtype) for s in _shapes(jnp.float32, B, NH, DHQK, DHV)]
    x[5] = x[5].astype(state_dtype)
    return x


def test_bad_inputs_name_the_problem():
    step = get_kernel("step--triton")
    with pytest.raises(ValueError, match="state c must be float32, got bfloat16"):
        step(*_inputs(state_dtype=jnp.bfloat16))
    q, k, v, i, f, c, n, m = _inputs()
    with pytest.raises(ValueError, match="k"):
        step(q, k[:, :1], v, i, f, c, n, m)


@pytest.mark.skipif(launch.gpu_visible(), reason="needs a machine without a GPU")
def test_without_a_gpu_it_names_the_fallback():
    with pytest.raises(RuntimeError, match="step--triton needs a CUDA GPU visible to JAX; use kernel='step--jax'"):
        get_kernel("step--triton")(*_inputs())
