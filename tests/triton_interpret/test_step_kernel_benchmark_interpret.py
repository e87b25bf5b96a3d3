"""``benchmarks/step_kernel.py`` runs end to end through Triton's interpreter at a tiny shape: a row per
kernel and tiling with a positive time and % of floor (CPU timings, not results), and the steps of its
loop equal the kernel called step by step."""

import jax
import numpy as np

from benchmarks import step_kernel
from xlstm_flax.kernels import get_kernel


def test_a_row_per_kernel_and_tiling():
    rows = step_kernel.rows_for((1, 2, 16, 32), steps=2, tunings=[dict(block_dhv=16)], reps=1)
    assert [(row[1], row[2]) for row in rows] == [
        ("step--jax", "default"),
        ("step--triton", "default"),
        ("step--triton", "block_dhv=16"),
    ]
    assert all(row[3] > 0 and row[4] > 0 and row[5] > 0 for row in rows), rows


def test_the_loop_runs_the_steps_in_order():
    q, k, v, i, f, c, n, m = step_kernel.loop_inputs((1, 2, 16, 32), steps=3, seed=5)
    total, *state = step_kernel.step_loop("step--triton", {})(q, k, v, i, f, c, n, m)
    expected_total, expected_state = 0.0, (c, n, m)
    for t in range(3):
        h, expected_state = get_kernel("step--jax")(q[t], k[t], v[t], i[t], f[t], *expected_state)
        expected_total = expected_total + np.asarray(h[..., 0], np.float64)
    # bf16 h summed over 3 steps: 1e-2 of the largest; fp32 states: 1e-5
    np.testing.assert_allclose(np.asarray(total), expected_total, atol=1e-2 * np.abs(expected_total).max())
    for a, e in zip(state, expected_state):
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), atol=1e-5 * np.abs(np.asarray(e)).max())
    assert jax.tree.all(jax.tree.map(lambda x: bool(np.all(np.isfinite(x))), state))
