"""``"step--triton"`` (kernels/triton/step.py) in Triton's interpreter: 8 chained steps from a random state
against the float64 reference (tests/kernels/step_checks.py). fp32 q/k/v: every h and the last (c, n, m)
within 1e-5 of the largest reference value; bf16 q/k/v: h within 8e-3 (h is rounded to bf16 once), the
fp32 states within 1e-5. Head dims include ones that are not powers of two and a DHV split over several
programs.

Run in their own process: ``TRITON_INTERPRET=1 .venv/bin/python -m pytest -q -p no:cacheprovider
tests/triton_interpret``.
"""

import jax.numpy as jnp
import pytest

from tests.kernels.step_checks import check_chained_steps
from xlstm_flax.kernels.triton.step import step_block_dhv

CASES = [  # (B, NH, DHQK, DHV), dtype, tolerance of h
    ((2, 3, 16, 32), jnp.float32, 1e-5),
    ((1, 2, 48, 80), jnp.float32, 1e-5),
    ((1, 2, 256, 96), jnp.float32, 1e-5),  # 32 columns per program: 3 programs per head
    ((2, 2, 64, 128), jnp.bfloat16, 8e-3),
]


@pytest.mark.parametrize("dims, dtype, h_tol", CASES)
def test_chained_steps_match_the_float64_reference(dims, dtype, h_tol):
    check_chained_steps(dims, dtype, h_tol)


def test_state_tile_fits_the_register_budget():
    assert step_block_dhv(256, 512) == 32 and step_block_dhv(48, 80) == 128 and step_block_dhv(4096, 64) == 2
