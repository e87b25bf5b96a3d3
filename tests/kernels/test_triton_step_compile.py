"""The Triton step kernel ("step--triton") lowers for CUDA on the CPU machine (jax-triton down to PTX for
sm_90a) with C aliased to the new C (updated in place), and a model's decode step launches it once per
mLSTM layer; the launcher refuses an aliased output that is not last. No GPU needed (docs/testing.md)."""

import re

import jax
import jax.numpy as jnp
import pytest

from tests.kernels.lowering import lowered_triton_calls, skip_module_unless_lowerable
from tests.model.helpers import make_model, replace_mlstm, small_config

skip_module_unless_lowerable()

from xlstm_flax.kernels import get_kernel  # noqa: E402
from xlstm_flax.kernels.triton import launch, step  # noqa: E402

STEP_KERNEL = b"mlstm_step_kernel"


def _step_args(B, NH, DHQK, DHV, dtype):
    sds = jax.ShapeDtypeStruct
    qk, v, gate = sds((B, NH, DHQK), dtype), sds((B, NH, DHV), dtype), sds((B, NH), jnp.float32)
    states = sds((B, NH, DHQK, DHV), jnp.float32), sds((B, NH, DHQK), jnp.float32), sds((B, NH), jnp.float32)
    return qk, qk, v, gate, gate, *states


@pytest.mark.parametrize(
    "B, NH, DHQK, DHV, dtype",
    [(2, 8, 256, 512, jnp.bfloat16), (1, 3, 48, 80, jnp.float32), (4, 4, 128, 256, jnp.float16)],
)
def test_step_kernel_lowers_to_sm90_ptx_with_c_in_place(monkeypatch, B, NH, DHQK, DHV, dtype):
    monkeypatch.setattr(step, "_require_triton_backend", lambda: None)
    args = _step_args(B, NH, DHQK, DHV, dtype)
    payloads = lowered_triton_calls(get_kernel("step--triton"), *args)
    assert len(payloads) == 1 and STEP_KERNEL in payloads[0] and b".target sm_90a" in payloads[0]
    text = jax.jit(get_kernel("step--triton")).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
    aliases = re.findall(r"output_operand_alias<output_tuple_indices = \[(\d+)\], operand_index = (\d+)", text)
    assert aliases == [("3", "5")], f"C (operand 5) should alias the new C (output 3), got {aliases}"


def test_decode_step_launches_it_once_per_mlstm_layer(monkeypatch):
    monkeypatch.setattr(step, "_require_triton_backend", lambda: None)
    config = replace_mlstm(small_config("xlstm7b", num_blocks=3, slstm_at=(1,)), step_kernel="step--triton")
    model = make_model(config)
    token = jnp.zeros((2,), jnp.int32)
    state = model.init_state(2)
    payloads = lowered_triton_calls(lambda t, s: model.step(t, s), token, state)
    assert sum(STEP_KERNEL in p for p in payloads) == 2, "two mLSTM blocks, one launch each"


def test_an_aliased_output_before_another_one_is_refused():
    """jax-triton 0.4.1 hands the kernel its output pointers from the front of XLA's results, aliased ones
    included, so the launcher only takes aliased outputs last."""
    x = jnp.ones((4,), jnp.float32)
    out = (jax.ShapeDtypeStruct((4,), jnp.float32),) * 2
    with pytest.raises(ValueError, match=r"aliased outputs \[0\] must be the last of the 2 outputs"):
        launch.triton_call(x, kernel=step.mlstm_step_kernel, out_shape=out, grid=(1,), aliases={0: 0})
