"""Document resets (``segment_ids``) in the pure-JAX sequence backends: packed rows against the float64
reference with the same segments (tests/reference.py, itself checked against per-document runs in
tests/test_reference.py), values, last states and gradients.

Tolerances: values max |error| / max |reference|, gradients ||g - g_ref|| / ||g_ref|| per input:
fp32 1e-5 (the issue's bound), fp64 1e-12 values / 1e-10 gradients; bf16 values 3e-2 (as without resets).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.grad_reference import GRAD_NAMES, random_cotangents, reference_gradients, relative_error
from tests.kernels.compare import assert_outputs_close, jitted_kernel, reference_outputs
from tests.reference import random_inputs
from tests.segments import segment_layout
from xlstm_flax.kernels import get_kernel

SEQUENCE_KERNELS = ("parallel--jax", "recurrent--jax", "chunkwise--jax")
CHUNK = 16
DIMS = dict(B=3, NH=2, DHQK=24, DHV=40)


def run(name, x, segment_ids, **options):
    options = {"chunk_size": CHUNK, **options}
    return jitted_kernel(name)(**x, return_last_states=True, segment_ids=segment_ids, **options)


@pytest.mark.parametrize("name", SEQUENCE_KERNELS)
@pytest.mark.parametrize("S, with_states", [(37, True), (64, False)])
def test_fp32_packed_matches_reference(name, S, with_states):
    x = random_inputs(jax.random.PRNGKey(S + 1), S=S, with_states=with_states, **DIMS)
    ids = segment_layout(S, B=3, S=S, chunk=CHUNK, n_random=5)
    out = run(name, x, ids)
    assert_outputs_close(out, reference_outputs(x, segment_ids=ids), 1e-5, 1e-5, f"{name} packed S={S}")


@pytest.mark.parametrize("name", SEQUENCE_KERNELS)
def test_fp64_packed_matches_reference(name):
    with jax.enable_x64():
        x = random_inputs(jax.random.PRNGKey(3), S=37, with_states=True, dtype=jnp.float64, **DIMS)
        x = {key: val.astype(jnp.float64) for key, val in x.items()}
        ids = segment_layout(3, B=3, S=37, chunk=CHUNK, n_random=4)
        out = run(name, x, ids, qk_scale=0.3, eps=1e-3)
        want = reference_outputs(x, qk_scale=0.3, eps=1e-3, segment_ids=ids)
        assert_outputs_close(out, want, 1e-12, 1e-12, f"{name} packed fp64")


@pytest.mark.parametrize("name", SEQUENCE_KERNELS)
def test_bf16_packed_matches_reference(name):
    x = random_inputs(jax.random.PRNGKey(5), S=37, with_states=True, dtype=jnp.bfloat16, **DIMS)
    ids = segment_layout(5, B=3, S=37, chunk=CHUNK, n_random=4)
    assert_outputs_close(run(name, x, ids), reference_outputs(x, segment_ids=ids), 3e-2, 1e-2, f"{name} bf16")


@pytest.mark.parametrize("name", SEQUENCE_KERNELS)
def test_one_segment_equals_no_segments(name):
    """Constant ids (one document per row) give the result of ``segment_ids=None`` up to fp32 rounding (the
    reset-aware cumulative sum adds in another order; seen 1.6e-6): 1e-5."""
    x = random_inputs(jax.random.PRNGKey(7), S=37, with_states=True, **DIMS)
    ids = np.full((3, 37), 9, np.int32)
    assert_outputs_close(run(name, x, ids), run(name, x, None), 1e-5, 1e-5, f"{name} one segment")


@pytest.mark.parametrize("name", SEQUENCE_KERNELS)
def test_long_row_many_resets_fp32(name):
    """S = 1024, ~60 resets per row at random places plus the special ones of ``segment_layout``, forget
    gates f ~ N(0, 1) (long log decays): no precision loss from the resets, 1e-5."""
    x = random_inputs(jax.random.PRNGKey(11), B=2, NH=2, S=1024, DHQK=8, DHV=8, with_states=True)
    x["f"] = x["f"] - 3.0
    ids = segment_layout(11, B=2, S=1024, chunk=64, n_random=60)
    out = run(name, x, ids, chunk_size=64)
    assert_outputs_close(out, reference_outputs(x, segment_ids=ids), 1e-5, 1e-5, f"{name} S=1024 packed")


@pytest.mark.parametrize("name", SEQUENCE_KERNELS)
def test_fp32_packed_gradients_match_reference(name):
    """Loss on h and on the last states; gradients of q, k, v, i, f and the initial states, 1e-5."""
    x = random_inputs(jax.random.PRNGKey(13), S=37, with_states=True, **DIMS)
    ids = segment_layout(13, B=3, S=37, chunk=CHUNK, n_random=5)
    cot = random_cotangents(jax.random.PRNGKey(14), x, last_states=True)
    want = reference_gradients(x, cot, segment_ids=ids)
    got = _gradients(name, x, cot, ids)
    for n in GRAD_NAMES:
        err = relative_error(got[n], want[n])
        assert err <= 1e-5, f"{name}: d loss / d {n} relative error {err:.2e} > 1e-5"


@pytest.mark.parametrize("name", SEQUENCE_KERNELS)
def test_extreme_gates_with_resets_stay_finite_and_exact(name):
    """Input gates ~ +-60, forget gates down to ~-30, resets everywhere: finite values and gradients,
    values within 1e-5 of the reference."""
    x = random_inputs(jax.random.PRNGKey(17), S=37, with_states=True, **DIMS)
    x["i"] = x["i"] * 15.0
    x["f"] = (x["f"] - 3.0) * 8.0
    ids = segment_layout(17, B=3, S=37, chunk=CHUNK, n_random=12)
    assert_outputs_close(run(name, x, ids), reference_outputs(x, segment_ids=ids), 1e-5, 1e-5, f"{name} extreme")
    cot = random_cotangents(jax.random.PRNGKey(18), x, last_states=True)
    for n, g in _gradients(name, x, cot, ids).items():
        assert np.all(np.isfinite(g)), f"{name}: d loss / d {n} has non-finite entries"


@pytest.mark.parametrize(
    "ids, message",
    [
        (np.zeros((3, 36), np.int32), r"segment_ids has shape \(3, 36\), expected \(B, S\)"),
        (np.zeros((3, 37), np.float32), "segment_ids must be an integer array"),
    ],
)
def test_bad_segment_ids_rejected(ids, message):
    x = random_inputs(jax.random.PRNGKey(19), S=37, **DIMS)
    for name in SEQUENCE_KERNELS:
        with pytest.raises(ValueError, match=message):
            get_kernel(name)(**x, segment_ids=ids)


def _gradients(name, x, cot, ids):
    kernel = get_kernel(name)

    def loss(args):
        h, last = kernel(
            *(args[n] for n in "qkvif"),
            c_initial=args["c_initial"],
            n_initial=args["n_initial"],
            m_initial=args["m_initial"],
            return_last_states=True,
            chunk_size=CHUNK,
            segment_ids=ids,
        )
        return jnp.sum(h * cot["h"]) + sum(jnp.sum(s * cot[n]) for s, n in zip(last, "cnm"))

    return jax.jit(jax.grad(loss))({n: x[n] for n in GRAD_NAMES})
