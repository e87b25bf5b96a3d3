"""The backward with materialised scores (``materialise_bw_scores=True``: a scores kernel stores dS and
P per chunk, dq / dk / dv read them) in Triton's interpreter, against autodiff of the float64 reference.

Run in their own process: ``TRITON_INTERPRET=1 .venv/bin/python -m pytest -q -p no:cacheprovider
tests/triton_interpret``. Tolerances: those of test_bw_interpret.py (relative Frobenius error of every
gradient <= TOL[dtype]); with segments those of test_segments_interpret.py (fp32: 3e-5).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.grad_reference import GRAD_NAMES, linear_loss, random_cotangents, reference_gradients, relative_error
from tests.reference import random_inputs
from tests.segments import segment_layout
from tests.triton_interpret.test_bw_interpret import EPS, QK_SCALE, TOL, _assert_gradients, _forward_backward
from xlstm_flax.kernels import get_kernel

ON = dict(materialise_bw_scores=True)
CASES = [
    # (dtype, S, DHQK, DHV, with_states, backward tuning): rows owned > looped, contracted in blocks
    (jnp.float32, 64, 24, 40, True, dict(ON, block_steps_owned=32, block_steps_looped=16, block_dh_contracted=16)),
    # looped > owned: the scores kernel's last block crosses the diagonal, then zero blocks
    (jnp.float32, 64, 16, 16, False, dict(ON, block_steps_owned=16, block_steps_looped=32, block_dh_owned=16)),
    (jnp.float16, 32, 16, 32, True, dict(ON, block_steps_owned=16, block_steps_looped=16)),
    # owned < looped < chunk: dk / dv start their row loop inside the chunk, below their own steps
    (jnp.float32, 128, 16, 16, False, dict(ON, block_steps_owned=16, block_steps_looped=32, chunk_size_intra=64)),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{jnp.dtype(c[0]).name}-S{c[1]}-{c[2]}x{c[3]}")
def test_materialised_backward_matches_reference_gradients(case):
    dtype, S, DHQK, DHV, with_states, bw_tuning = case
    x = random_inputs(
        jax.random.PRNGKey(S + DHQK + DHV + 5), B=1, NH=2, S=S, DHQK=DHQK, DHV=DHV, dtype=dtype, with_states=with_states
    )
    cot = random_cotangents(jax.random.PRNGKey(11), x, last_states=True)
    bw_tuning = dict(bw_tuning)
    intra = bw_tuning.pop("chunk_size_intra", 32)
    grads = _forward_backward(
        tuple(x[n] for n in ("q", "k", "v", "i", "f")),
        tuple(x.get(n) for n in ("c_initial", "n_initial", "m_initial")),
        cot,
        tuple(sorted(dict(chunk_size_inter=16, chunk_size_intra=intra).items())),
        tuple(sorted(dict(bw_tuning, chunk_size_recurrent=16, chunk_size_intra=intra).items())),
    )
    _assert_gradients(dict(zip(GRAD_NAMES, grads)), reference_gradients(x, cot, QK_SCALE, EPS), TOL[dtype])


def test_materialised_backward_with_segments_through_the_registry():
    """Document resets and S = 50 (padded to 64) through ``chunkwise--triton``: every gradient against
    the float64 reference (fp32, relative error <= 3e-5)."""
    S, eps = 50, 1e-2
    tuning = dict(ON, chunk_size=32, chunk_size_inter=16, chunk_size_recurrent=16, block_steps_looped=16)
    x = random_inputs(jax.random.PRNGKey(S + 9), B=2, NH=1, S=S, DHQK=16, DHV=24, with_states=True)
    ids = segment_layout(S + 9, B=2, S=S, chunk=16, n_random=4)

    def call(args):
        return get_kernel("chunkwise--triton")(**args, return_last_states=True, eps=eps, segment_ids=ids, **tuning)

    cot = random_cotangents(jax.random.PRNGKey(S + 10), x, last_states=True)
    names = [n for n in GRAD_NAMES if x.get(n) is not None]
    got = jax.jit(jax.grad(lambda a: linear_loss(*call(a), cot)))({n: x[n] for n in names})
    want = reference_gradients(x, cot, eps=eps, segment_ids=ids)
    assert all(np.all(np.isfinite(np.asarray(got[n]))) for n in names), "non-finite gradient"
    for n in names:
        err = relative_error(got[n], want[n])
        assert err <= 3e-5, f"d loss / d {n}: relative error {err:.2e} > 3e-5"
