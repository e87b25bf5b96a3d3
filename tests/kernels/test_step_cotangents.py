"""The Triton backward's step 1 (``chunkwise_bw.step_cotangents``, JAX) against the formulas in float64:
mden = m + log(den + eps), dden = -sum(dh * h) / (den + eps), dnq = dden sign(nq) [|nq| > e^-m] (den + eps).
Fresh random inputs, head dims that are no power of two. Tolerances (max relative error): dden, dnq 1e-5
(fp32 sums of DHV products); mden 1e-6 (fp32 log and sum).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xlstm_flax.kernels.triton.chunkwise_bw import step_cotangents

EPS = 1e-6


def _max_rel(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("DHV", [40, 300])
def test_step_cotangents_match_float64(dtype, DHV):
    B, NH, S = 1, 3, 23
    keys = jax.random.split(jax.random.PRNGKey(DHV), 5)
    dh = jax.random.normal(keys[0], (B, NH, S, DHV), dtype)
    h = jax.random.normal(keys[1], (B, NH, S, DHV), dtype)
    den = jnp.exp(jax.random.normal(keys[2], (B, NH, S)))  # > 0, as the forward's max(|nq|, e^-m)
    m = jax.random.normal(keys[3], (B, NH, S))
    nq = 2.0 * jax.random.normal(keys[4], (B, NH, S))  # about a third of them inside (-e^-m, e^-m)
    mden, dden, dnq = step_cotangents(dh, h, den, m, nq, EPS)

    dh64, h64, den64, m64, nq64 = (np.asarray(x, np.float64) for x in (dh, h, den, m, nq))
    dden_want = -np.sum(dh64 * h64, axis=-1) / (den64 + EPS)
    counts = np.abs(nq64) > np.exp(-m64)
    assert 0 < counts.mean() < 1, "the indicator should be both on and off somewhere"
    assert mden.dtype == dden.dtype == dnq.dtype == jnp.float32
    assert _max_rel(mden, m64 + np.log(den64 + EPS)) <= 1e-6
    assert _max_rel(dden, dden_want) <= 1e-5
    assert _max_rel(dnq, dden_want * np.sign(nq64) * counts * (den64 + EPS)) <= 1e-5
