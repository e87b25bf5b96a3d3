"""The Triton forward stays finite for gate pre-activations of +-1e30, and matches the single-step
closed form under full forget gates (tests/kernels/test_huge_gates.py has the pure-JAX backends and
the details; same tolerance, 2e-5 of the largest |h|, fp32)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.kernels.test_huge_gates import DIMS, first_non_finite_step, single_step_h, with_huge_gates
from tests.reference import random_inputs
from xlstm_flax.kernels import get_kernel


@pytest.mark.parametrize("seed", [0, 1])
def test_huge_gates_give_finite_outputs_and_states(seed):
    x = with_huge_gates(random_inputs(jax.random.PRNGKey(seed), with_states=True, **DIMS), seed)
    h, states = get_kernel("chunkwise--triton")(**x, return_last_states=True, chunk_size=16)
    for label, out in (("h", h), *zip(("c", "n", "m"), states)):
        assert np.all(np.isfinite(np.asarray(out))), f"{label} not finite"


def test_full_forget_gates_leave_each_step_alone():
    x = random_inputs(jax.random.PRNGKey(7), with_states=True, **DIMS)
    x["f"] = jnp.full_like(x["f"], -1e30)
    x["i"] = jnp.where(jnp.arange(DIMS["S"]) % 3 == 0, 3e4, x["i"])
    h = get_kernel("chunkwise--triton")(**x, chunk_size=16)
    expected = single_step_h(x)
    error = np.max(np.abs(np.asarray(h, np.float64) - expected)) / np.max(np.abs(expected))
    assert error < 2e-5, f"error {error:.2e}"


def test_nan_reach():
    """A NaN in v at step 21 (chunk 16) makes h non-finite from its chunk's first step, 16, on: the chunk
    before stays finite (docs/kernels.md section 2)."""
    assert first_non_finite_step("chunkwise--triton", 21) == 16
