"""Gradients of every pure-JAX sequence backend against float64 autodiff of tests/reference.py.

The loss is a random linear function of the raw h and of the last states (c, n, m); gradients are
taken w.r.t. q, k, v, i, f and the initial states c0, n0, m0. Tolerance per gradient,
||g - g_ref|| / ||g_ref||: 1e-10 for backends run in fp64 (seen ~1e-14), 1e-4 in fp32 (seen <= 5e-6).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.kernels.compare import INPUT_NAMES, STATE_NAMES, as_float64
from tests.reference import mlstm_reference, random_inputs
from xlstm_flax.kernels import get_kernel

SEQUENCE_KERNELS = ("parallel--jax", "recurrent--jax", "chunkwise--jax")
ARG_NAMES = INPUT_NAMES + STATE_NAMES
DIMS = dict(B=2, NH=3, S=37, DHQK=24, DHV=40)


def linear_loss(kernel, weights):
    """sum(h * w_h) + sum(c * w_c) + sum(n * w_n) + sum(m * w_m) as a function of the 8 arguments."""

    def loss(q, k, v, i, f, c0, n0, m0):
        h, last = kernel(q, k, v, i, f, c0, n0, m0)
        return sum(jnp.sum(out * w) for out, w in zip((h, *last), weights))

    return loss


def reference_kernel(**options):
    def call(q, k, v, i, f, c0, n0, m0):
        h, _, _, last = mlstm_reference(q, k, v, i, f, c0, n0, m0, **options)
        return h, last

    return call


def backend_kernel(name, chunk_size=16, **options):
    kernel = get_kernel(name)

    def call(q, k, v, i, f, c0, n0, m0):
        return kernel(
            q,
            k,
            v,
            i,
            f,
            c_initial=c0,
            n_initial=n0,
            m_initial=m0,
            return_last_states=True,
            chunk_size=chunk_size,
            **options,
        )

    return call


def gradients(kernel, weights, args):
    return jax.jit(jax.grad(linear_loss(kernel, weights), argnums=tuple(range(8))))(*args)


@pytest.fixture(scope="module")
def problem():
    """fp32 arguments, loss weights, and the float64 reference gradients."""
    x = random_inputs(jax.random.PRNGKey(31), with_states=True, **DIMS)
    args = [x[name] for name in ARG_NAMES]
    B, NH, S, DHQK, DHV = DIMS.values()
    keys = jax.random.split(jax.random.PRNGKey(37), 4)
    shapes = ((B, NH, S, DHV), (B, NH, DHQK, DHV), (B, NH, DHQK), (B, NH))
    weights = [jax.random.normal(key, shape) for key, shape in zip(keys, shapes)]
    with jax.enable_x64():
        args64 = [as_float64(a) for a in args]
        weights64 = [as_float64(w) for w in weights]
        expected = [np.asarray(g) for g in gradients(reference_kernel(), weights64, args64)]
    return args, weights, args64, weights64, expected


def assert_gradients_close(grads, expected, tol, what):
    for name, g, e in zip(ARG_NAMES, grads, expected):
        err = np.linalg.norm(as_float64(g) - e) / np.linalg.norm(e)
        assert err <= tol, f"{what}: d loss / d {name} relative error {err:.2e} > {tol:.0e}"


@pytest.mark.parametrize("name", SEQUENCE_KERNELS)
def test_fp64_gradients_match_reference(name, problem):
    _, _, args64, weights64, expected = problem
    with jax.enable_x64():
        grads = gradients(backend_kernel(name), weights64, args64)
        assert all(g.dtype == jnp.float64 for g in grads)
        assert_gradients_close(grads, expected, 1e-10, f"{name} fp64")


@pytest.mark.parametrize("name", SEQUENCE_KERNELS)
def test_fp32_gradients_match_reference(name, problem):
    args, weights, _, _, expected = problem
    assert_gradients_close(gradients(backend_kernel(name), weights, args), expected, 1e-4, f"{name} fp32")


@pytest.fixture(scope="module")
def overflowing_floor(problem):
    """The problem with head 0's input gates at -95 and forget gates at -10 at every step (m falls by ~10 a
    step, so exp(-m) exceeds fp32 from about the 9th step on and h rounds to 0 there), and its float64
    reference gradients."""
    args, weights, _, _, _ = problem
    args = list(args)
    args[3] = args[3].at[:, 0].set(-95.0)
    args[4] = args[4].at[:, 0].set(-10.0)
    with jax.enable_x64():
        args64, weights64 = [as_float64(a) for a in args], [as_float64(w) for w in weights]
        expected = [np.asarray(g) for g in gradients(reference_kernel(), weights64, args64)]
    return args, weights, expected


@pytest.mark.parametrize("name", SEQUENCE_KERNELS)
def test_fp32_gradients_stay_finite_where_the_normaliser_floor_overflows(name, overflowing_floor):
    """The gradients of all heads still match the float64 reference (tolerance 1e-4, as above); the plain
    exp(-m) floor gave NaN for i and f."""
    args, weights, expected = overflowing_floor
    grads = gradients(backend_kernel(name), weights, args)
    assert all(np.all(np.isfinite(np.asarray(g))) for g in grads), f"{name}: non-finite gradient"
    assert_gradients_close(grads, expected, 1e-4, f"{name} fp32, overflowing floor")


def test_chunkwise_gradients_without_initial_states():
    """Default states (zeros, m_0 = 0), one padded chunk: loss on h only, fp64, tolerance 1e-10."""
    x = random_inputs(jax.random.PRNGKey(41), B=2, NH=3, S=21, DHQK=24, DHV=40)
    weight = jax.random.normal(jax.random.PRNGKey(43), (2, 3, 21, 40))
    chunkwise = get_kernel("chunkwise--jax")
    with jax.enable_x64():
        args = [as_float64(x[name]) for name in INPUT_NAMES]
        w = as_float64(weight)
        got = jax.jit(jax.grad(lambda *a: jnp.sum(chunkwise(*a, chunk_size=8) * w), argnums=(0, 1, 2, 3, 4)))(*args)
        ref = jax.jit(jax.grad(lambda *a: jnp.sum(mlstm_reference(*a)[0] * w), argnums=(0, 1, 2, 3, 4)))(*args)
        for name, g, e in zip(INPUT_NAMES, got, ref):
            err = np.linalg.norm(np.asarray(g) - np.asarray(e)) / np.linalg.norm(np.asarray(e))
            assert err <= 1e-10, f"d loss / d {name}: relative error {err:.2e} > 1e-10"


@pytest.mark.parametrize("with_segments", [False, True])
def test_chunkwise_row_stabiliser_gradient(with_segments, problem):
    """h depends on the row stabiliser m_i only through the eps term (``h = num / (max(|nq|, 1) + eps e^m)``
    unstabilised), so at eps = 1e-6 m's gradient moves the others by ~1e-6; at eps = 0.5 it carries ~25% of
    them and its hand-written O(L) backward (state, or b_i, b_j, i_j of the winning step) must be exact:
    fp64 against the reference, 1e-10. With segments: resets every 11 steps (rows after a reset see the
    restarted state)."""
    _, _, args64, weights64, _ = problem
    B, S = DIMS["B"], DIMS["S"]
    ids = np.cumsum(np.arange(S) % 11 == 10)[None].repeat(B, 0) if with_segments else None
    with jax.enable_x64():
        expected = gradients(reference_kernel(eps=0.5, segment_ids=ids), weights64, args64)
        grads = gradients(backend_kernel("chunkwise--jax", eps=0.5, segment_ids=ids), weights64, args64)
        assert_gradients_close(grads, [np.asarray(e) for e in expected], 1e-10, f"eps 0.5, segments {with_segments}")


def square_float_comparisons(jaxpr, L: int) -> list[str]:
    """Comparisons of float operands with an (L x L)-shaped output in ``jaxpr`` and the jaxprs nested in it."""
    found = []
    for eqn in jaxpr.eqns:
        for param in eqn.params.values():
            inner = getattr(param, "jaxpr", param)
            if hasattr(inner, "eqns"):
                found += square_float_comparisons(inner, L)
        compares_floats = eqn.primitive.name in ("eq", "ne", "ge", "gt", "le", "lt") and any(
            jnp.issubdtype(x.aval.dtype, jnp.floating) for x in eqn.invars
        )
        found += [eqn.primitive.name for out in eqn.outvars if compares_floats and out.aval.shape[-2:] == (L, L)]
    return found


@pytest.mark.parametrize("with_segments", [False, True])
def test_chunkwise_backward_keeps_no_square_argmax_mask(with_segments):
    """Autodiff of the (L x L) row max would compare every log weight with the max and keep that (L x L)
    mask for the backward (1.5-2x slower fw+bw on an H200); the row stabiliser's backward routes its
    cotangent through an int argmax per row instead: no float (L x L) comparison anywhere in fw+bw.
    Chunk L = 16, S = 37 (three chunks, the last padded)."""
    x = random_inputs(jax.random.PRNGKey(5), **DIMS)
    ids = np.cumsum(np.arange(DIMS["S"]) % 11 == 10)[None].repeat(DIMS["B"], 0) if with_segments else None
    chunkwise = get_kernel("chunkwise--jax")

    def loss(*args):
        return jnp.sum(chunkwise(*args, chunk_size=16, segment_ids=ids))

    jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1, 2, 3, 4)))(*(x[name] for name in INPUT_NAMES))
    assert square_float_comparisons(jaxpr.jaxpr, 16) == []
