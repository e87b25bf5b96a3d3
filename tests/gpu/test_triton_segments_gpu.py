"""Document resets in ``chunkwise--triton`` on a CUDA GPU through jax-triton (``pytest -m gpu``): packed rows
against the float64 reference with the same segments (values, last states, gradients), and a packed row
against the same kernel run document by document.

Tolerances as the GPU tests without resets: values max |error| / max |reference| fp32 1e-4 (3xTF32 dots),
bf16 3e-2; gradients ||g - g_ref|| / ||g_ref|| fp32 1e-3, bf16 3e-2; packed vs separate (both Triton,
rounded differently because documents sit at other chunk offsets): fp32 1e-4 / 1e-3, bf16 3e-2 / 5e-2.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.grad_reference import GRAD_NAMES, linear_loss, random_cotangents, reference_gradients, relative_error
from tests.kernels.compare import assert_outputs_close, reference_outputs
from tests.reference import random_inputs
from tests.segments import document_bounds, segment_layout
from xlstm_flax.kernels import get_kernel
from xlstm_flax.kernels.registry import triton_usable

pytestmark = pytest.mark.gpu
if not triton_usable():
    pytest.skip("needs a CUDA GPU with jax_triton", allow_module_level=True)

VALUE_TOL = {jnp.float32: 1e-4, jnp.bfloat16: 3e-2}
GRAD_TOL = {jnp.float32: 1e-3, jnp.bfloat16: 3e-2}
SEPARATE_GRAD_TOL = {jnp.float32: 1e-3, jnp.bfloat16: 5e-2}
EPS = 1e-4

CASES = [
    # (dtype, S, DHQK, DHV, with_states, resets per row, tuning)
    (jnp.float32, 512, 64, 128, True, 24, dict(chunk_size=64, chunk_size_inter=32, chunk_size_recurrent=32)),
    (jnp.float32, 1000, 48, 96, False, 60, {}),  # padded to 1024
    (jnp.bfloat16, 1024, 256, 512, True, 40, {}),
    (jnp.bfloat16, 512, 64, 64, True, 100, dict(chunk_size=128, save_states=True)),  # many one-token documents
    (jnp.bfloat16, 1000, 256, 512, True, 40, dict(materialise_scores=True)),  # scores + output kernels, padded S
]


def _case_id(case):
    dtype, S, DHQK, DHV, with_states, resets, tuning = case
    return (
        f"{jnp.dtype(dtype).name}-S{S}-{DHQK}x{DHV}-{resets}resets"
        + ("-states" if with_states else "")
        + (f"-{len(tuning)}opts" if tuning else "")
    )


def _call(x, ids, tuning):
    return get_kernel("chunkwise--triton")(**x, return_last_states=True, eps=EPS, segment_ids=ids, **tuning)


def _grads(loss, x):
    names = [n for n in GRAD_NAMES if x.get(n) is not None]
    return jax.jit(jax.grad(loss))({n: x[n] for n in names})


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_packed_matches_reference(case):
    dtype, S, DHQK, DHV, with_states, resets, tuning = case
    x = random_inputs(
        jax.random.PRNGKey(S + resets), B=2, NH=2, S=S, DHQK=DHQK, DHV=DHV, dtype=dtype, with_states=with_states
    )
    ids = segment_layout(S, B=2, S=S, chunk=tuning.get("chunk_size", 128), n_random=resets)
    out = jax.jit(lambda x: _call(x, ids, tuning))(x)
    assert np.all(np.isfinite(np.asarray(out[0], np.float32)))
    want = reference_outputs(x, segment_ids=ids, eps=EPS)
    assert_outputs_close(out, want, VALUE_TOL[dtype], VALUE_TOL[dtype], f"triton packed {_case_id(case)}")

    cot = random_cotangents(jax.random.PRNGKey(S), x, last_states=True)
    got = _grads(lambda a: linear_loss(*_cast(_call(a, ids, tuning)), cot), x)
    want = reference_gradients(x, cot, eps=EPS, segment_ids=ids)
    errors = {n: relative_error(got[n], want[n]) for n in got}
    assert all(np.all(np.isfinite(np.asarray(g, np.float32))) for g in got.values()), "non-finite gradient"
    bad = {n: f"{e:.2e}" for n, e in errors.items() if not e <= GRAD_TOL[dtype]}
    assert not bad, f"relative gradient errors above {GRAD_TOL[dtype]}: {bad}"


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=lambda d: jnp.dtype(d).name)
def test_packed_equals_documents_run_separately(dtype):
    """One row of ~20 documents (resets at chunk boundaries, one-token documents): h, the last state and
    all gradients of the packed call equal those of one call per document (the first from the initial
    states, the others from zero)."""
    S = 700
    x = random_inputs(jax.random.PRNGKey(3), B=1, NH=2, S=S, DHQK=64, DHV=64, dtype=dtype, with_states=True)
    ids = segment_layout(5, B=1, S=S, chunk=128, n_random=12)
    bounds = document_bounds(ids[0])
    cot = random_cotangents(jax.random.PRNGKey(4), x, last_states=True)

    def separate(a):
        hs = []
        for start, stop in bounds:
            piece = {n: a[n][:, :, start:stop] for n in "qkvif"}
            if start == 0:
                piece.update({n: a[n] for n in ("c_initial", "n_initial", "m_initial")})
            h, last = _call(piece, None, {})  # last: the state after this document
            hs.append(h)
        return jnp.concatenate(hs, axis=2), last

    packed = jax.jit(lambda a: _call(a, ids, {}))(x)
    alone = jax.jit(separate)(x)
    expected = (np.asarray(alone[0], np.float32), tuple(np.asarray(s) for s in alone[1]))
    assert_outputs_close(packed, expected, VALUE_TOL[dtype], VALUE_TOL[dtype], "packed vs separate")
    got = _grads(lambda a: linear_loss(*_cast(_call(a, ids, {})), cot), x)
    want = _grads(lambda a: linear_loss(*_cast(separate(a)), cot), x)
    errors = {n: relative_error(got[n], np.asarray(want[n], np.float32)) for n in got}
    bad = {n: f"{e:.2e}" for n, e in errors.items() if not e <= SEPARATE_GRAD_TOL[dtype]}
    assert not bad, f"packed vs separate gradient errors above {SEPARATE_GRAD_TOL[dtype]}: {bad}"


def _cast(out):
    h, last = out
    return h.astype(jnp.float32), last
