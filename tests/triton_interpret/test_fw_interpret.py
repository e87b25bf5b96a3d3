"""Triton forward kernels in Triton's interpreter vs the float64 reference (tests/reference.py).

Run in their own process: ``TRITON_INTERPRET=1 .venv/bin/python -m pytest -q -p no:cacheprovider
tests/triton_interpret``. Error measure: tests/kernels/triton_fw_checks.py; tolerances per dtype below.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.kernels.triton_fw_checks import (
    FwCase,
    assert_close,
    check_forward,
    make_inputs,
    reference,
    reference_states_at,
)
from xlstm_flax.kernels.triton import launch, mlstm_chunkwise_fw, mlstm_chunkwise_states
from xlstm_flax.kernels.triton.chunkwise_fw import mlstm_chunkwise_fw_result

# fp32: the interpreter's fp32 dots are exact fp32, so only summation order differs.
# fp16 / bf16: states and the weighted scores are cast to the input dtype before their dots, and h is
# rounded to it (bf16 dots run on widened operands in the interpreter, see harness.py).
TOL = {jnp.float32: 2e-5, jnp.float16: 2e-3, jnp.bfloat16: 2e-2}

CASES = [
    FwCase(jnp.float32, 1, 32, 16, 16, 16, 16, False, {}),
    FwCase(jnp.float32, 2, 64, 24, 40, 16, 32, True, dict(siz_b_L_parallel=16, siz_b_L_loop=32, siz_b_DH_loop=16)),
    FwCase(jnp.float32, 1, 64, 16, 24, 32, 32, True, dict(siz_b_L_parallel=32, siz_b_L_loop=16, siz_b_DH_parallel=16)),
    FwCase(jnp.float16, 1, 64, 24, 16, 16, 32, True, {}),
    FwCase(jnp.float16, 2, 32, 16, 24, 16, 16, False, {}),
    FwCase(jnp.bfloat16, 1, 32, 16, 16, 16, 32, True, {}),
]


@pytest.mark.parametrize("case", CASES, ids=FwCase.id)
def test_forward_matches_reference(case):
    check_forward(case, TOL[case.dtype], seed=case.S + case.DHQK + case.DHV + case.B)


def test_signed_nq_matches_reference():
    """vecNQ = n_t . (s q_t), stabilised and signed: the reference's h with v = 1 and C0 = n0 is
    nq_t / den_t (the n path is the C path with a value column of ones)."""
    x, states = make_inputs(7, jnp.float32, 1, 32, 16, 16, True)
    result = mlstm_chunkwise_fw_result(
        x["q"],
        x["k"],
        x["v"],
        x["i"],
        x["f"],
        states["c0"],
        states["n0"],
        states["m0"],
        chunk_size_inter=16,
        chunk_size_intra=32,
    )
    ones = dict(x, v=jnp.ones(x["v"].shape[:3] + (1,), jnp.float32))
    (ratio, den, _), _ = reference(ones, 0.0, c0=states["n0"][..., None], n0=states["n0"], m0=states["m0"])
    ref_nq = ratio[..., 0] * den
    assert np.any(ref_nq < 0) and np.any(ref_nq > 0), "test data should exercise both signs"
    assert_close("vecNQ", result.vecNQ, ref_nq, TOL[jnp.float32])


def test_states_entry_point_matches_reference():
    x, states = make_inputs(11, jnp.float32, 2, 64, 24, 16, True)
    got = mlstm_chunkwise_states(
        x["k"],
        x["v"],
        x["i"],
        x["f"],
        states["c0"],
        states["n0"],
        states["m0"],
        chunk_size_inter=16,
        chunk_size_intra=32,
    )
    for name, g, want in zip(("C", "n", "m"), got, reference_states_at(x, 32, states, [0, 1, 2])):
        assert_close(f"states {name}", g, want, TOL[jnp.float32])


def test_forward_under_jit_matches_eager():
    x, _ = make_inputs(3, jnp.float32, 1, 32, 16, 16, False)

    def fw(q, k, v, i, f):
        return mlstm_chunkwise_fw(q, k, v, i, f, chunk_size_intra=16)[0]

    np.testing.assert_array_equal(np.asarray(jax.jit(fw)(**x)), np.asarray(fw(**x)))


def test_registry_entry_pads_any_length():
    from xlstm_flax.kernels import get_kernel

    kernel = get_kernel("chunkwise--triton")
    x, states = make_inputs(13, jnp.float32, 1, 40, 24, 16, True)  # S = 40 is padded to 48 (chunk 16)
    h, last = kernel(
        x["q"],
        x["k"],
        x["v"],
        x["i"],
        x["f"],
        c_initial=states["c0"],
        n_initial=states["n0"],
        m_initial=states["m0"],
        return_last_states=True,
        chunk_size=16,
        chunk_size_inter=16,
    )
    (ref_h, _, _), ref_last = reference(x, 1e-6, **states)
    assert h.dtype == jnp.float32
    assert_close("h", h, ref_h, TOL[jnp.float32])
    for name, got, want in zip(("C", "n", "m"), last, ref_last):
        assert_close(f"last {name}", got, want, TOL[jnp.float32])


def test_launcher_without_runner_raises():
    x, _ = make_inputs(5, jnp.float32, 1, 16, 16, 16, False)
    launch.set_interpreter_runner(None)
    try:
        with pytest.raises(RuntimeError, match="no interpreter runner"):
            mlstm_chunkwise_fw(x["q"], x["k"], x["v"], x["i"], x["f"])
    finally:
        from tests.triton_interpret import harness

        harness.install()
