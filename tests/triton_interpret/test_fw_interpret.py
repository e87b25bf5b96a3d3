"""Triton forward kernels in Triton's interpreter vs the float64 reference (tests/reference.py).

Run in their own process: ``TRITON_INTERPRET=1 .venv/bin/python -m pytest -q -p no:cacheprovider
tests/triton_interpret``. Errors are measured relative to the largest reference magnitude of each
output (``max|got - want| <= tol * max(1, max|want|)``); tolerances per q/k/v dtype below.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.reference import mlstm_reference, random_inputs
from xlstm_flax.kernels.triton import launch, mlstm_chunkwise_fw, mlstm_chunkwise_states
from xlstm_flax.kernels.triton.chunkwise_fw import mlstm_chunkwise_fw_result

# fp32: the interpreter's fp32 dots are exact fp32, so only summation order differs.
# fp16 / bf16: states and the weighted scores are cast to the input dtype before their dots, and h is
# rounded to it (bf16 dots run on widened operands in the interpreter, see harness.py).
TOL = {jnp.float32: 2e-5, jnp.float16: 2e-3, jnp.bfloat16: 2e-2}

CASES = [
    # (dtype, B, S, DHQK, DHV, chunk_size_inter, chunk_size_intra, with_states, blocks)
    (jnp.float32, 1, 32, 16, 16, 16, 16, False, {}),
    (jnp.float32, 2, 64, 24, 40, 16, 32, True, dict(siz_b_L_parallel=16, siz_b_L_loop=32, siz_b_DH_loop=16)),
    (jnp.float32, 1, 64, 16, 24, 32, 32, True, dict(siz_b_L_parallel=32, siz_b_L_loop=16, siz_b_DH_parallel=16)),
    (jnp.float16, 1, 64, 24, 16, 16, 32, True, {}),
    (jnp.float16, 2, 32, 16, 24, 16, 16, False, {}),
    (jnp.bfloat16, 1, 32, 16, 16, 16, 32, True, {}),
]


def _assert_close(name, got, want, tol):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    assert np.all(np.isfinite(got)), f"{name}: non-finite values (NaN = an element never written)"
    err, scale = np.max(np.abs(got - want)), max(1.0, np.max(np.abs(want)))
    assert err <= tol * scale, f"{name}: max abs error {err:.3g} > {tol} * {scale:.3g}"


def _reference(x, eps, **states):
    with jax.enable_x64():
        h, den, m, last = mlstm_reference(x["q"], x["k"], x["v"], x["i"], x["f"], eps=eps, **states)
        return tuple(np.asarray(a) for a in (h, den, m)), tuple(np.asarray(a) for a in last)


def _reference_all_states(x, chunk, states):
    """States after 0, chunk, 2 chunk, ... steps: the reference's last states of each prefix."""
    S = x["q"].shape[2]
    B, NH = x["q"].shape[:2]
    c0 = states.get("c0", np.zeros((B, NH) + (x["q"].shape[-1], x["v"].shape[-1])))
    n0 = states.get("n0", np.zeros((B, NH, x["q"].shape[-1])))
    m0 = states.get("m0", np.zeros((B, NH)))
    out = [(np.asarray(c0), np.asarray(n0), np.asarray(m0))]
    for end in range(chunk, S + 1, chunk):
        prefix = {key: val[:, :, :end] for key, val in x.items() if key in ("q", "k", "v", "i", "f")}
        out.append(_reference(prefix, 0.0, **states)[1])
    return tuple(np.stack([o[j] for o in out], axis=2) for j in range(3))


def _inputs(seed, dtype, B, S, DHQK, DHV, with_states):
    x = random_inputs(jax.random.PRNGKey(seed), B=B, NH=2, S=S, DHQK=DHQK, DHV=DHV, dtype=dtype,
                      with_states=with_states)
    states = {}
    if with_states:
        states = dict(c0=x.pop("c_initial"), n0=x.pop("n_initial"), m0=x.pop("m_initial"))
    return x, states


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{jnp.dtype(c[0]).name}-S{c[2]}-dh{c[3]}x{c[4]}-{c[5]}of{c[6]}")
def test_forward_matches_reference(case):
    dtype, B, S, DHQK, DHV, inter, intra, with_states, blocks = case
    x, states = _inputs(S + DHQK + DHV + B, dtype, B, S, DHQK, DHV, with_states)
    eps = 1e-6
    h, den, m, last, all_states = mlstm_chunkwise_fw(
        x["q"], x["k"], x["v"], x["i"], x["f"], states.get("c0"), states.get("n0"), states.get("m0"),
        return_last_states=True, return_all_states=True, chunk_size_inter=inter, chunk_size_intra=intra,
        eps=eps, **blocks,
    )
    (ref_h, ref_den, ref_m), ref_last = _reference(x, eps, **states)
    tol = TOL[dtype]
    assert h.dtype == dtype and den.dtype == jnp.float32 and m.dtype == jnp.float32
    _assert_close("h", h, ref_h, tol)
    _assert_close("vecN (den)", den, ref_den, tol)
    _assert_close("vecM", m, ref_m, tol)
    for name, got, want in zip(("C", "n", "m"), last, ref_last):
        _assert_close(f"last {name}", got, want, tol)
    for name, got, want in zip(("C", "n", "m"), all_states, _reference_all_states(x, intra, states)):
        _assert_close(f"all-states {name}", got, want, tol)


def test_signed_nq_matches_reference():
    """vecNQ = n_t . (s q_t), stabilised and signed: the reference's h with v = 1 and C0 = n0 is
    nq_t / den_t (the n path is the C path with a value column of ones)."""
    x, states = _inputs(7, jnp.float32, 1, 32, 16, 16, True)
    result = mlstm_chunkwise_fw_result(
        x["q"], x["k"], x["v"], x["i"], x["f"], states["c0"], states["n0"], states["m0"],
        chunk_size_inter=16, chunk_size_intra=32,
    )
    ones = dict(x, v=jnp.ones(x["v"].shape[:3] + (1,), jnp.float32))
    (ref_ratio, ref_den, _), _ = _reference(ones, 0.0, c0=states["n0"][..., None], n0=states["n0"], m0=states["m0"])
    ref_nq = ref_ratio[..., 0] * ref_den
    assert np.any(ref_nq < 0) and np.any(ref_nq > 0), "test data should exercise both signs"
    _assert_close("vecNQ", result.vecNQ, ref_nq, TOL[jnp.float32])


def test_states_entry_point_matches_reference():
    x, states = _inputs(11, jnp.float32, 2, 64, 24, 16, True)
    got = mlstm_chunkwise_states(
        x["k"], x["v"], x["i"], x["f"], states["c0"], states["n0"], states["m0"],
        chunk_size_inter=16, chunk_size_intra=32,
    )
    for name, g, want in zip(("C", "n", "m"), got, _reference_all_states(x, 32, states)):
        _assert_close(f"states {name}", g, want, TOL[jnp.float32])


def test_forward_under_jit_matches_eager():
    x, _ = _inputs(3, jnp.float32, 1, 32, 16, 16, False)
    fw = lambda q, k, v, i, f: mlstm_chunkwise_fw(q, k, v, i, f, chunk_size_intra=16)[0]
    np.testing.assert_array_equal(np.asarray(jax.jit(fw)(**x)), np.asarray(fw(**x)))


def test_launcher_without_runner_raises():
    x, _ = _inputs(5, jnp.float32, 1, 16, 16, 16, False)
    launch.set_interpreter_runner(None)
    try:
        with pytest.raises(RuntimeError, match="no interpreter runner"):
            mlstm_chunkwise_fw(x["q"], x["k"], x["v"], x["i"], x["f"])
    finally:
        from tests.triton_interpret import harness

        harness.install()


def test_registry_entry_pads_any_length_and_has_no_backward_yet():
    from xlstm_flax.kernels import get_kernel

    kernel = get_kernel("chunkwise--triton")
    x, states = _inputs(13, jnp.float32, 1, 40, 24, 16, True)  # S = 40 is padded to 48 (chunk 16)
    h, last = kernel(
        x["q"], x["k"], x["v"], x["i"], x["f"], c_initial=states["c0"], n_initial=states["n0"],
        m_initial=states["m0"], return_last_states=True, chunk_size=16, chunk_size_inter=16,
    )
    (ref_h, _, _), ref_last = _reference(x, 1e-6, **states)
    assert h.shape == ref_h.shape and h.dtype == jnp.float32
    _assert_close("h", h, ref_h, TOL[jnp.float32])
    for name, got, want in zip(("C", "n", "m"), last, ref_last):
        _assert_close(f"last {name}", got, want, TOL[jnp.float32])
    loss = lambda q: kernel(q, x["k"], x["v"], x["i"], x["f"], chunk_size=16).sum()
    with pytest.raises(NotImplementedError, match="train with kernel='chunkwise--jax'"):
        jax.grad(loss)(x["q"])
