"""The experiment ``benchmarks/fused_forward.py`` (the mLSTM forward with the chunk states carried in
registers, never stored) computes what the library's forward computes, so that its timings compare equal
work. Triton's interpreter, fp32 inputs: h, den, m, nq and the last C within 1e-5 of the largest library
value (the same sums in another order); a head dim that is not a power of two and a partial DHV tile
included.

Run in their own process: ``TRITON_INTERPRET=1 .venv/bin/python -m pytest -q -p no:cacheprovider
tests/triton_interpret``.
"""

import jax.numpy as jnp
import pytest

from benchmarks import fused_forward as experiment
from benchmarks.timing import mlstm_inputs

TOL = 1e-5


@pytest.mark.parametrize("shape, chunk", [((1, 2, 256, 64, 128), 64), ((1, 1, 128, 48, 96), 32)])
def test_fused_forward_equals_the_library_forward(shape, chunk):
    q, k, v, i, f, _ = mlstm_inputs(shape, jnp.float32, seed=5)
    want = experiment.library_forward(q, k, v, i, f, chunk)
    got = experiment.fused_forward(q, k, v, i, f, chunk_size=chunk, tile=(64, 4, 2))
    for name, x, y in zip(("h", "den", "m", "nq", "C_last"), got, want):
        assert x.shape == y.shape and x.dtype == y.dtype, (name, x.shape, y.shape, x.dtype, y.dtype)
        error = experiment.max_relative(x, y)
        assert error <= TOL, f"{name}: {error:.3g} > {TOL}"
