"""Document resets (``segment_ids``) through the ``chunkwise--triton`` registry entry in Triton's
interpreter: the ``*_segments_kernel`` variants forward and backward against the float64 reference with
the same segments (tests/reference.py, checked against per-document runs in tests/test_reference.py).

Run in their own process: ``TRITON_INTERPRET=1 .venv/bin/python -m pytest -q -p no:cacheprovider
tests/triton_interpret``. Tolerances as the interpreter tests without resets: values max |error| /
max |reference| <= 2e-5, gradients ||g - g_ref|| / ||g_ref|| <= 3e-5 (fp32; the interpreter multiplies
fp32 exactly, only summation order differs). eps = 1e-2 so the m path carries a visible share.
"""

import jax
import numpy as np
import pytest

from tests.grad_reference import GRAD_NAMES, linear_loss, random_cotangents, reference_gradients, relative_error
from tests.kernels.compare import assert_outputs_close, reference_outputs
from tests.reference import random_inputs
from tests.segments import segment_layout
from xlstm_flax.kernels import get_kernel

EPS = 1e-2
CASES = [
    # (S, with_states, loss on last states, tuning): sub-chunks of 16 in intra chunks of 32, and one
    # intra chunk of 16 (every sub-chunk boundary an intra boundary); S = 50 is padded to 64
    (
        64,
        True,
        True,
        dict(
            chunk_size=32,
            chunk_size_inter=16,
            chunk_size_recurrent=16,
            siz_b_L_parallel=16,
            siz_b_L_loop=16,
            block_steps_owned=16,
            block_steps_looped=16,
        ),
    ),
    (50, False, True, dict(chunk_size=16, chunk_size_inter=16, chunk_size_recurrent=16)),
]


def _call(x, ids, tuning):
    return get_kernel("chunkwise--triton")(**x, return_last_states=True, eps=EPS, segment_ids=ids, **tuning)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"S{c[0]}-chunk{c[3]['chunk_size']}")
def test_packed_values_and_gradients_match_reference(case):
    S, with_states, last_loss, tuning = case
    x = random_inputs(jax.random.PRNGKey(S), B=2, NH=1, S=S, DHQK=16, DHV=16, with_states=with_states)
    ids = segment_layout(S, B=2, S=S, chunk=16, n_random=5)
    out = jax.jit(lambda x: _call(x, ids, tuning))(x)
    assert_outputs_close(out, reference_outputs(x, segment_ids=ids, eps=EPS), 2e-5, 2e-5, f"triton packed S={S}")

    cot = random_cotangents(jax.random.PRNGKey(S + 1), x, last_states=last_loss)
    names = [n for n in GRAD_NAMES if x.get(n) is not None]

    def loss(args):
        h, last = _call(args, ids, tuning)
        return linear_loss(h, last, cot)

    got = jax.jit(jax.grad(loss))({n: x[n] for n in names})
    want = reference_gradients(x, cot, eps=EPS, segment_ids=ids)
    for n in names:
        assert np.all(np.isfinite(np.asarray(got[n]))), f"d loss / d {n} has non-finite entries"
        err = relative_error(got[n], want[n])
        assert err <= 3e-5, f"d loss / d {n}: relative error {err:.2e} > 3e-5"
