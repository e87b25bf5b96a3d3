"""Pure-JAX sequence backends and the step kernel against the float64 reference and each other.

Tolerances (max |error| / max |reference|, inputs identical on both sides):
fp64 1e-12; fp32 2e-5 (seen <= 3e-6); fp16 h 1e-2, states 2e-3; bf16 h 3e-2, states 1e-2 (the
matmuls take fp16/bf16 operands: probabilities and chunk states are rounded before the matmul).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.kernels.compare import assert_outputs_close, jitted_kernel, reference_outputs
from tests.reference import random_inputs
from xlstm_flax.kernels import get_kernel

SEQUENCE_KERNELS = ("parallel--jax", "recurrent--jax", "chunkwise--jax")
CHUNK = 16
DIMS = dict(B=2, NH=3, DHQK=24, DHV=40)  # B != NH and head dims that are not powers of two
TOLERANCES = {jnp.float16: (1e-2, 2e-3), jnp.bfloat16: (3e-2, 1e-2)}


def run(name, x, **options):
    options = {"chunk_size": CHUNK, **options}
    return jitted_kernel(name)(**x, return_last_states=True, **options)


@pytest.mark.parametrize("name", SEQUENCE_KERNELS)
@pytest.mark.parametrize(
    "S, with_states",
    [(1, False), (37, True), (64, False)],  # one step; odd, not a multiple of the chunk; 4 whole chunks
)
def test_fp32_matches_reference(name, S, with_states):
    x = random_inputs(jax.random.PRNGKey(S), S=S, with_states=with_states, **DIMS)
    out = run(name, x)
    assert out[0].dtype == jnp.float32 and all(s.dtype == jnp.float32 for s in out[1])
    assert_outputs_close(out, reference_outputs(x), 2e-5, 2e-5, f"{name} fp32 S={S}")


@pytest.mark.parametrize("name", SEQUENCE_KERNELS)
def test_fp64_matches_reference(name):
    with jax.enable_x64():
        x = random_inputs(jax.random.PRNGKey(5), S=37, with_states=True, dtype=jnp.float64, **DIMS)
        x = {key: val.astype(jnp.float64) for key, val in x.items()}
        out = run(name, x, qk_scale=0.3, eps=1e-3)
        assert out[0].dtype == jnp.float64
        assert_outputs_close(out, reference_outputs(x, qk_scale=0.3, eps=1e-3), 1e-12, 1e-12, f"{name} fp64")


@pytest.mark.parametrize(
    "name, dtype, with_states",
    [(name, jnp.bfloat16, True) for name in SEQUENCE_KERNELS]
    + [("chunkwise--jax", jnp.bfloat16, False), ("chunkwise--jax", jnp.float16, True)],
)
def test_low_precision_matches_reference(name, dtype, with_states):
    x = random_inputs(jax.random.PRNGKey(7), S=37, with_states=with_states, dtype=dtype, **DIMS)
    out = run(name, x)
    assert out[0].dtype == dtype and all(s.dtype == jnp.float32 for s in out[1])
    tol_h, tol_states = TOLERANCES[dtype]
    assert_outputs_close(out, reference_outputs(x), tol_h, tol_states, f"{name} {jnp.dtype(dtype).name}")


def test_backends_agree_with_each_other():
    x = random_inputs(jax.random.PRNGKey(11), S=37, with_states=True, **DIMS)
    outs = {name: run(name, x) for name in SEQUENCE_KERNELS}
    base = outs["parallel--jax"]
    for name in ("recurrent--jax", "chunkwise--jax"):
        # fp32 against fp32: 2e-5
        assert_outputs_close(outs[name], base, 2e-5, 2e-5, f"{name} vs parallel--jax")


def test_chunk_sizes_agree():
    """Chunk lengths 1 (pure recurrence), 5 (not a power of two), 16 and 64 > S all give one result."""
    x = random_inputs(jax.random.PRNGKey(13), S=37, with_states=True, **DIMS)
    base = run("chunkwise--jax", x, chunk_size=16)
    for chunk_size in (1, 5, 64):
        out = run("chunkwise--jax", x, chunk_size=chunk_size)
        assert_outputs_close(out, base, 2e-5, 2e-5, f"chunk_size={chunk_size} vs 16")


def test_extreme_gates_stay_exact():
    """Input gates up to ~+-60 and forget gates down to ~-30 (exp would overflow unstabilised)."""
    x = random_inputs(jax.random.PRNGKey(17), S=37, with_states=True, **DIMS)
    x["i"] = x["i"] * 15.0
    x["f"] = (x["f"] - 3.0) * 8.0
    ref = reference_outputs(x)
    for name in SEQUENCE_KERNELS:
        out = run(name, x)
        assert np.all(np.isfinite(out[0]))
        assert_outputs_close(out, ref, 2e-5, 2e-5, f"{name} extreme gates")


@pytest.mark.parametrize(
    "name, tol",
    # parallel and recurrent: 2e-5 (a global cumulative log-gate sum gave 1.2e-4 here); chunkwise: 1e-4
    # (its within-chunk cumulative sums over 64 steps round like that; seen 2e-5)
    [("parallel--jax", 2e-5), ("recurrent--jax", 2e-5), ("chunkwise--jax", 1e-4)],
)
def test_long_sequence_fp32_precision(name, tol):
    """S = 1024 with forget gates f ~ N(0, 1): log decays summed over ~700 nats stay precise."""
    x = random_inputs(jax.random.PRNGKey(31), B=1, NH=2, S=1024, DHQK=8, DHV=8, with_states=True)
    x["f"] = x["f"] - 3.0
    out = jitted_kernel(name)(**x, return_last_states=True, chunk_size=64)
    assert_outputs_close(out, reference_outputs(x), tol, tol, f"{name} S=1024")


def test_step_token_by_token_reproduces_reference():
    x = random_inputs(jax.random.PRNGKey(19), S=9, with_states=True, **DIMS)
    step = jax.jit(get_kernel("step--jax"))
    state = (x["c_initial"], x["n_initial"], x["m_initial"])
    hs = []
    for t in range(9):
        h, state = step(*(x[name][:, :, t] for name in "qkvif"), *state)
        hs.append(h)
    assert_outputs_close((jnp.stack(hs, axis=2), state), reference_outputs(x), 2e-5, 2e-5, "step loop")


def test_step_dtypes():
    x = random_inputs(jax.random.PRNGKey(23), S=1, with_states=True, dtype=jnp.bfloat16, **DIMS)
    h, (c, n, m) = get_kernel("step--jax")(
        *(x[name][:, :, 0] for name in "qkvif"), x["c_initial"], x["n_initial"], x["m_initial"]
    )
    assert h.dtype == jnp.bfloat16 and h.shape == (2, 3, 40)
    assert (c.dtype, n.dtype, m.dtype) == (jnp.float32,) * 3


@pytest.mark.parametrize("name", SEQUENCE_KERNELS)
def test_state_passing(name):
    """Cutting S=37 into 10 + 17 + 10 tokens and carrying the states changes nothing."""
    x = random_inputs(jax.random.PRNGKey(29), S=37, with_states=True, **DIMS)
    full = run(name, x)
    state = (x["c_initial"], x["n_initial"], x["m_initial"])
    hs = []
    for start, stop in ((0, 10), (10, 27), (27, 37)):
        piece = {key: x[key][:, :, start:stop] for key in "qkvif"}
        h, state = run(name, piece, c_initial=state[0], n_initial=state[1], m_initial=state[2])
        hs.append(h)
    # fp32 against fp32: 2e-5
    assert_outputs_close((jnp.concatenate(hs, axis=2), state), full, 2e-5, 2e-5, f"{name} in 3 pieces")
