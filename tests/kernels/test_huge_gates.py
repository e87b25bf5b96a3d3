"""Every pure-JAX backend stays finite for any finite input, including gate pre-activations of +-1e30
(fp32; a model without gate soft-capping can produce such values). The Triton forward gets the same
checks in tests/triton_interpret/test_huge_gates_interpret.py.

Exact check: with f = -1e30 at every step (and input gates far below 1e30 in size, here up to 3e4) the
forget gate is 0 to fp32 precision, so each step sees only itself: m_t = i_t, C_t = k_t v_t^T, n_t = k_t
and h_t = v_t (s q_t.k_t) / (max(|s q_t.k_t|, e^-i_t) + eps), computed here in float64; tolerance 2e-5
of the largest |h| (the fp32 tolerance of test_jax_kernels.py).

Non-finite inputs: how far back a NaN at one step reaches, per backend (documented behaviour, not a bound).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.kernels.compare import jitted_kernel
from tests.reference import random_inputs
from xlstm_flax.kernels import get_kernel

SEQUENCE_KERNELS = ("parallel--jax", "recurrent--jax", "chunkwise--jax")
HUGE = np.array([-1e30, -3e4, 3e4, 1e30], np.float32)
DIMS = dict(B=2, NH=3, S=45, DHQK=24, DHV=40)  # S: two chunks of 16 and a padded third


def with_huge_gates(x: dict, seed: int) -> dict:
    """Half of the input and forget gate pre-activations replaced by huge values of either sign."""
    rng = np.random.default_rng(seed)
    out = dict(x)
    for gate in ("i", "f"):
        huge = rng.choice(HUGE, size=x[gate].shape)
        out[gate] = jnp.asarray(np.where(rng.random(x[gate].shape) < 0.5, huge, np.asarray(x[gate])), jnp.float32)
    return out


def single_step_h(x: dict, eps: float = 1e-6) -> np.ndarray:
    q, k, v, i = (np.asarray(x[name], np.float64) for name in ("q", "k", "v", "i"))
    score = np.einsum("bhtd,bhtd->bht", q, k) * q.shape[-1] ** -0.5
    return v * (score / (np.maximum(np.abs(score), np.exp(-i)) + eps))[..., None]


@pytest.mark.parametrize("name", SEQUENCE_KERNELS)
@pytest.mark.parametrize("seed", [0, 1])
def test_huge_gates_give_finite_outputs_and_states(name, seed):
    x = with_huge_gates(random_inputs(jax.random.PRNGKey(seed), with_states=True, **DIMS), seed)
    h, states = jitted_kernel(name)(**x, return_last_states=True, chunk_size=16)
    for label, out in (("h", h), *zip(("c", "n", "m"), states)):
        assert np.all(np.isfinite(np.asarray(out))), f"{name}: {label} not finite"


@pytest.mark.parametrize("name", SEQUENCE_KERNELS)
def test_full_forget_gates_leave_each_step_alone(name):
    x = random_inputs(jax.random.PRNGKey(7), with_states=True, **DIMS)
    x["f"] = jnp.full_like(x["f"], -1e30)
    x["i"] = jnp.where(jnp.arange(DIMS["S"]) % 3 == 0, 3e4, x["i"])  # and some huge input gates
    h = jitted_kernel(name)(**x, chunk_size=16)
    expected = single_step_h(x)
    error = np.max(np.abs(np.asarray(h, np.float64) - expected)) / np.max(np.abs(expected))
    assert error < 2e-5, f"{name}: error {error:.2e}"


def test_step_kernel_stays_finite_over_huge_gates():
    x = with_huge_gates(random_inputs(jax.random.PRNGKey(3), with_states=True, **DIMS), 3)
    step = jax.jit(get_kernel("step--jax"))
    c, n, m = x["c_initial"], x["n_initial"], x["m_initial"]
    for t in range(DIMS["S"]):
        h, (c, n, m) = step(*(x[name][:, :, t] for name in ("q", "k", "v", "i", "f")), c, n, m)
        assert all(np.all(np.isfinite(np.asarray(a))) for a in (h, c, n, m)), f"step {t}"


def first_non_finite_step(name: str, t: int) -> int:
    """The first step of ``h`` that is not finite when v holds a NaN at step ``t`` (S = 64, chunk 16)."""
    x = random_inputs(jax.random.PRNGKey(5), B=1, NH=1, S=64, DHQK=16, DHV=16)
    x["v"] = x["v"].at[0, 0, t].set(jnp.nan)
    h = np.asarray(get_kernel(name)(**x, chunk_size=16), np.float64)
    return int(np.argmax(~np.all(np.isfinite(h[0, 0]), axis=-1)))


@pytest.mark.parametrize("name, first", [("recurrent--jax", 21), ("chunkwise--jax", 0), ("parallel--jax", 0)])
def test_nan_reach(name, first):
    """How far back a NaN in v at step 21 reaches (docs/kernels.md section 2): the recurrence keeps earlier
    steps finite; backends that multiply masked tiles do not (0 x NaN)."""
    assert first_non_finite_step(name, 21) == first
