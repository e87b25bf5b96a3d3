"""The Triton backward's m path (``chunkwise_bw._stabiliser_cotangents``, docs/math.md 4.6) equals
autodiff of the stabiliser written as its recurrence, in float64 on fresh random gates, with and without
document resets, with m0 winning some early steps; tolerance 1e-12 (float64 rounding of the sums). Two
hand-made rows pin the ties: m0 equal to the running max splits dm half and half, as autodiff does; tied
steps of i - F give the later step the whole share (autodiff splits it; the totals agree).

The reference walks t in order: F_t = F_{t-1} + log f_t, M_t = max(M_{t-1}, i_t - F_t), m_t = F_t +
max(base, M_t), F and M restarting and base becoming 0 at every segment start.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("triton")

from xlstm_flax.kernels.triton import chunkwise_bw  # noqa: E402

B, NH, S = 2, 3, 40
TOL = 1e-12


def reference_m(vecI, vecLogF, scaM0, resets):
    F = jnp.zeros(scaM0.shape, vecI.dtype)
    M = jnp.full(scaM0.shape, -jnp.inf, vecI.dtype)
    base = scaM0
    out = []
    for t in range(vecI.shape[-1]):
        if resets is not None:
            start = resets[:, t][:, None]
            F, M, base = (jnp.where(start, 0.0, F), jnp.where(start, -jnp.inf, M), jnp.where(start, 0.0, base))
        F = F + vecLogF[..., t]
        M = jnp.maximum(M, vecI[..., t] - F)
        out.append(F + jnp.maximum(base, M))
    return jnp.stack(out, axis=-1)


def base_wins(vecI, vecLogF, scaM0, resets) -> np.ndarray:
    """(B, NH, S) bool: base > M_t, the recurrence above in numpy."""
    wins = np.zeros(vecI.shape, bool)
    for b, h in np.ndindex(scaM0.shape):
        F, M, base = 0.0, -np.inf, scaM0[b, h]
        for t in range(vecI.shape[-1]):
            if resets is not None and resets[b, t]:
                F, M, base = 0.0, -np.inf, 0.0
            F += vecLogF[b, h, t]
            M = max(M, vecI[b, h, t] - F)
            wins[b, h, t] = base > M
    return wins


def random_inputs(seed: int):
    rng = np.random.default_rng(seed)
    vecI = 2.0 * rng.standard_normal((B, NH, S))
    vecLogF = np.log(1.0 / (1.0 + np.exp(-(3.0 + rng.standard_normal((B, NH, S))))))  # log sigmoid(f), f ~ N(3, 1)
    scaM0 = 3.0 * rng.standard_normal((B, NH))  # large enough to win the first steps of some rows
    vecDM = rng.standard_normal((B, NH, S))
    return vecI, vecLogF, scaM0, vecDM


@pytest.mark.parametrize("with_resets", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_m_path_cotangents_equal_autodiff_of_the_recurrence(with_resets, seed):
    vecI, vecLogF, scaM0, vecDM = random_inputs(seed)
    resets = None
    if with_resets:
        resets = np.zeros((B, S), bool)
        resets[0, [7, 8, 25]] = True  # a one-step segment included
        resets[1, 19] = True
    with jax.enable_x64():
        args = tuple(jnp.asarray(x, jnp.float64) for x in (vecI, vecLogF, scaM0))
        dm = jnp.asarray(vecDM, jnp.float64)
        jr = None if resets is None else jnp.asarray(resets)
        _, vjp = jax.vjp(lambda *a: reference_m(*a, jr), *args)
        want_di, want_dlogf, want_dm0 = vjp(dm)
        got_di, got_dF, got_dm0 = chunkwise_bw._stabiliser_cotangents(*args, dm, jr)
        got_dlogf = chunkwise_bw._reverse_segment_sums(got_dF, None if jr is None else jr[:, None])
    wins = base_wins(vecI, vecLogF, scaM0, resets)
    assert wins.any() and not wins.all()  # both branches of the outer max are exercised
    for got, want, name in ((got_di, want_di, "di"), (got_dlogf, want_dlogf, "dlogf"), (got_dm0, want_dm0, "dm0")):
        got, want = np.asarray(got), np.asarray(want)
        err = float(np.max(np.abs(got - want)))
        assert err <= TOL * max(1.0, float(np.max(np.abs(want)))), f"{name}: max error {err:.2e}"


def _cotangents_and_reference(vecI, vecLogF, scaM0, vecDM):
    """(ours, autodiff of the recurrence), each (di, d log f, dm0), float64 numpy, no resets."""
    with jax.enable_x64():
        args = tuple(jnp.asarray(x, jnp.float64) for x in (vecI, vecLogF, scaM0))
        dm = jnp.asarray(vecDM, jnp.float64)
        _, vjp = jax.vjp(lambda *a: reference_m(*a, None), *args)
        di, dF, dm0 = chunkwise_bw._stabiliser_cotangents(*args, dm, None)
        ours = (di, chunkwise_bw._reverse_segment_sums(dF, None), dm0)
        return tuple(np.asarray(x) for x in ours), tuple(np.asarray(x) for x in vjp(dm))


def test_a_tie_between_m0_and_the_running_max_splits_half_each_as_autodiff_does():
    vecI = np.array([[[0.0, -1.0, -1.0, 2.0, 0.5, 3.0]]])  # with log f = 0, M = m0 = 0 for the first three steps
    dm = np.random.default_rng(2).standard_normal(vecI.shape)
    ours, want = _cotangents_and_reference(vecI, np.zeros_like(vecI), np.zeros((1, 1)), dm)
    for got, ref in zip(ours, want):
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours[2], 0.5 * dm[..., :3].sum(-1), rtol=0, atol=1e-12)


def test_tied_steps_of_x_give_the_whole_share_to_the_later_step():
    """Every step ties (i = 1, log f = 0): each owns itself, di = dm; autodiff splits the share among the
    tied steps otherwise, with the same total."""
    vecI = np.ones((1, 1, 6))
    dm = np.random.default_rng(3).standard_normal(vecI.shape)
    ours, want = _cotangents_and_reference(vecI, np.zeros_like(vecI), np.full((1, 1), -5.0), dm)
    np.testing.assert_allclose(ours[0], dm, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours[0].sum(), want[0].sum(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours[2], want[2], rtol=0, atol=1e-12)  # m0 never wins: 0 both
