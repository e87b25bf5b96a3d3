"""The experiment ``benchmarks/states_two_pass.py`` (chunk states and state cotangents as a batched GEMM plus
a scan) computes what the library's sequential recurrent kernels compute, so that its timings compare
equal work. Triton's interpreter, fp32 inputs: C / dC, n / dn and m within 1e-5 of the largest library
value (the same sums in another order).

Run in their own process: ``TRITON_INTERPRET=1 .venv/bin/python -m pytest -q -p no:cacheprovider
tests/triton_interpret``.
"""

import jax.numpy as jnp

from benchmarks import states_two_pass as experiment
from benchmarks.timing import mlstm_inputs
from xlstm_flax.kernels import common
from xlstm_flax.kernels.triton import chunkwise_bw as bw
from xlstm_flax.kernels.triton.chunkwise_fw import mlstm_chunkwise_fw_result, mlstm_chunkwise_states
from xlstm_flax.kernels.triton.shared import heads_flat
from xlstm_flax.kernels.triton.tuning import resolve_bw_config

SHAPE, L, TOL = (1, 2, 256, 64, 128), 64, 1e-5


def _assert_close(got, want, names):
    for name, x, y in zip(names, got, want):
        x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32).reshape(x.shape)
        err, scale = float(jnp.max(jnp.abs(x - y))), max(1.0, float(jnp.max(jnp.abs(y))))
        assert err <= TOL * scale, f"{name}: {err:.3g} > {TOL} * {scale:.3g}"


def test_two_pass_states_equal_the_recurrent_kernel():
    q, k, v, i, f, _ = mlstm_inputs(SHAPE, jnp.float32, seed=3)
    want = mlstm_chunkwise_states(k, v, i, f, chunk_size_inter=L, chunk_size_intra=L)
    got = experiment.two_pass_states(k, v, i, f, L)
    _assert_close(got, [heads_flat(x) for x in want], ("C", "n", "m"))


def test_two_pass_cotangents_equal_the_recurrent_kernel():
    q, k, v, i, f, dh = mlstm_inputs(SHAPE, jnp.float32, seed=4)
    B, NH, S, K, V = SHAPE
    config = resolve_bw_config(common.Dims(*SHAPE), q.dtype, chunk_size_intra=L)
    fw = mlstm_chunkwise_fw_result(q, k, v, i, f, eps=experiment.EPS, chunk_size_intra=L)
    residuals = (jnp.zeros((B, NH)), fw.matH, fw.vecDen, fw.vecM, fw.vecNQ, dh)
    args, _ = bw.kernel_args(q, k, v, i, f, *residuals, eps=experiment.EPS, chunk_size_intra=L)
    zeros = jnp.zeros((B * NH, K, V)), jnp.zeros((B * NH, K))
    want = bw.state_cotangents(args, *zeros, K**-0.5, config)[:2]
    got = experiment.two_pass_cotangents(args, L, K**-0.5)
    _assert_close(got, want, ("dC", "dn"))
    assert float(jnp.max(jnp.abs(want[0]))) > 0, "the cotangents must not be all zero"
