"""Numerics of the Triton step kernel ("step--triton") under the interpreter: token by token against the
float64 reference, one step against "step--jax", its tilings, huge gates, input checks, and a model's
decode steps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.kernels.compare import assert_close, assert_outputs_close, reference_outputs
from tests.kernels.test_huge_gates import DIMS as HUGE_DIMS
from tests.kernels.test_huge_gates import with_huge_gates
from tests.model.helpers import assert_close_to_scale, make_model, random_tokens, replace_mlstm, small_config
from tests.reference import random_inputs
from xlstm_flax.kernels import get_kernel

STATES = ("c_initial", "n_initial", "m_initial")


def _one_step(name, x, t=0, **options):
    return get_kernel(name)(*(x[key][:, :, t] for key in "qkvif"), *(x[key] for key in STATES), **options)


@pytest.mark.parametrize(
    "dims",
    [
        dict(B=2, NH=2, DHQK=24, DHV=40),  # padded head dims, masked rows and columns
        dict(B=1, NH=3, DHQK=64, DHV=128),
    ],
)
def test_token_by_token_matches_float64_reference(dims):
    x = random_inputs(jax.random.PRNGKey(41), S=6, with_states=True, **dims)
    step = jax.jit(get_kernel("step--triton"))
    state = tuple(x[key] for key in STATES)
    hs = []
    for t in range(6):
        h, state = step(*(x[key][:, :, t] for key in "qkvif"), *state)
        hs.append(h)
    # fp32 against float64: 2e-5, as the step--jax loop (tests/kernels/test_jax_kernels.py)
    assert_outputs_close((jnp.stack(hs, axis=2), state), reference_outputs(x), 2e-5, 2e-5, "step--triton loop")


@pytest.mark.parametrize(
    "options",
    [dict(), dict(block_dhqk=16, block_dhv=16), dict(block_dhqk=64, block_dhv=32, num_warps=2)],
)
def test_one_step_matches_step_jax(options):
    """DHQK 48 over blocks of 16 and 64 (a partial last one), DHV 80 over 16 and 32 columns."""
    x = random_inputs(jax.random.PRNGKey(43), B=2, NH=2, S=1, DHQK=48, DHV=80, with_states=True)
    out = _one_step("step--triton", x, **options)
    expected = _one_step("step--jax", x)
    # fp32 both, the same formulas summed in another order: 1e-5 of the largest magnitude
    assert_outputs_close(out, expected, 1e-5, 1e-5, f"step--triton {options}")


def test_bf16_inputs_give_bf16_h_and_fp32_states():
    x = random_inputs(jax.random.PRNGKey(47), B=2, NH=2, S=1, DHQK=32, DHV=64, dtype=jnp.bfloat16, with_states=True)
    h, (c, n, m) = _one_step("step--triton", x)
    assert h.dtype == jnp.bfloat16 and (c.dtype, n.dtype, m.dtype) == (jnp.float32,) * 3
    expected_h, expected_states = _one_step("step--jax", x)
    # both compute in fp32 from the same bf16 values; h rounds once to bf16: 1e-2 of its largest magnitude
    assert_close(h, expected_h, 1e-2, "bf16 h")
    for name, a, e in zip("cnm", (c, n, m), expected_states):
        assert_close(a, e, 1e-5, f"bf16 {name}")


def test_huge_gates_stay_finite():
    x = with_huge_gates(random_inputs(jax.random.PRNGKey(3), with_states=True, **HUGE_DIMS), 3)
    step = jax.jit(get_kernel("step--triton"))
    c, n, m = (x[key] for key in STATES)
    for t in range(HUGE_DIMS["S"]):
        h, (c, n, m) = step(*(x[key][:, :, t] for key in "qkvif"), c, n, m)
        assert all(np.all(np.isfinite(np.asarray(a))) for a in (h, c, n, m)), f"step {t}"


def test_the_initial_state_is_left_unchanged():
    """C is updated in place on the device; the caller's array keeps its values."""
    x = random_inputs(jax.random.PRNGKey(53), B=1, NH=2, S=1, DHQK=16, DHV=32, with_states=True)
    before = np.array(x["c_initial"])
    jax.jit(get_kernel("step--triton"))(*(x[key][:, :, 0] for key in "qkvif"), *(x[key] for key in STATES))
    np.testing.assert_array_equal(np.asarray(x["c_initial"]), before)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(block_dhv=24), "block_dhv=24 must be a power of two"),
        (dict(num_warps=3), "num_warps=3 must be a power of two"),
        (dict(eps=-1.0), "eps must be >= 0"),
    ],
)
def test_bad_options_are_named(options, message):
    x = random_inputs(jax.random.PRNGKey(59), B=1, NH=1, S=1, DHQK=16, DHV=16, with_states=True)
    with pytest.raises(ValueError, match=message):
        _one_step("step--triton", x, **options)


def test_float64_inputs_are_refused():
    with jax.enable_x64():
        x = random_inputs(jax.random.PRNGKey(61), B=1, NH=1, S=1, DHQK=16, DHV=16, dtype=jnp.float64, with_states=True)
        with pytest.raises(ValueError, match="step--triton supports q/k/v in float32, bfloat16, float16; got float64"):
            _one_step("step--triton", x)


def test_model_decode_steps_match_step_jax():
    """A model's decode steps (2 mLSTM blocks around an sLSTM one) with step--triton against step--jax."""
    config = small_config("xlstm7b", num_blocks=3, slstm_at=(1,))
    tokens = random_tokens(67, 2, 4)
    logits = {}
    for name in ("step--jax", "step--triton"):
        model = make_model(replace_mlstm(config, step_kernel=name))
        step = nnx.jit(lambda model, token, state: model.step(token, state))
        state, outputs = model.init_state(2), []
        for t in range(tokens.shape[1]):
            out, state = step(model, tokens[:, t], state)
            outputs.append(out)
        logits[name] = jnp.stack(outputs)
    # fp32 both: 1e-5 of the largest logit
    assert_close_to_scale(logits["step--triton"], logits["step--jax"], 1e-5, "decode logits")
