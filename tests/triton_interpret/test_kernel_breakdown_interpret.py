"""``benchmarks/kernel_breakdown.py`` runs end to end through Triton's interpreter at a tiny shape: a row
per forward and backward kernel, glue and registry call, each with a positive time, and the kernel rows
with their FLOP, bytes and a positive % of floor (the numbers themselves are CPU timings, not results);
each backward kernel rotates over the input sets' residuals.

Run in their own process: ``TRITON_INTERPRET=1 .venv/bin/python -m pytest -q -p no:cacheprovider
tests/triton_interpret``.
"""

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import kernel_breakdown
from benchmarks.timing import mlstm_inputs


def test_breakdown_has_a_timed_row_per_kernel():
    rows, notes = kernel_breakdown.breakdown((1, 1, 64, 16, 32), reps=1)
    names = [row[0] for row in rows]
    backward = [f"backward: {name}" for name in ("step 1", "dC recurrence", "dS, P scores", "dq", "dk", "dv")]
    assert names == [
        "forward: states (recurrent)",
        "forward: parallel (whole forward - states - glue)",
        "glue: forward gate cumsum",
        *backward,
        "sum: forward + backward kernels above",
        "registry chunkwise--triton fw",
        "registry chunkwise--triton fwbw",
    ]
    assert all(row[1] > 0 for row in rows if not row[0].startswith("forward: parallel")), rows
    for row in rows:
        if row[0].startswith("backward") or row[0] == "forward: states (recurrent)":
            gflop, gbytes, floor, percent = row[2:6]
            assert gflop > 0 and gbytes > 0 and floor > 0 and percent > 0, row
    assert any("forward config" in line for line in notes)


def test_each_backward_kernel_rotates_over_the_input_sets():
    """Every backward kernel is timed on the residuals of each input set in turn (not one set's buffers
    over and over, which could stay in L2)."""
    input_sets = [mlstm_inputs((1, 1, 64, 16, 32), jnp.bfloat16, seed) for seed in (0, 1)]
    calls = kernel_breakdown.backward_kernel_calls(input_sets, {})
    assert set(calls) >= {"states", "dC recurrence", "dq", "dk", "dv", "step 1"}
    for name, (_, arg_sets) in calls.items():
        assert len(arg_sets) == 2, name
        first, second = (jax.tree.leaves(args) for args in arg_sets)
        assert not all(np.array_equal(a, b) for a, b in zip(first, second)), f"{name}: one buffer set twice"
