"""Triton backward kernels in Triton's interpreter vs autodiff of the float64 reference.

Run in their own process: ``TRITON_INTERPRET=1 .venv/bin/python -m pytest -q -p no:cacheprovider
tests/triton_interpret``. Every gradient (q, k, v, i, f, c0, n0, m0) of a random linear loss on raw h
(and on the last states where stated) must match ``jax.grad`` of ``tests.reference.mlstm_reference``
to a relative Frobenius error ``||got - want|| / ||want|| <= TOL[dtype]``. eps is 1e-2 so that the
m-path (m reaches h only through eps) carries a visible share of the i, f and m0 gradients.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.grad_reference import GRAD_NAMES, linear_loss, random_cotangents, reference_gradients, relative_error
from tests.reference import random_inputs
from xlstm_flax.kernels import get_kernel
from xlstm_flax.kernels.triton.chunkwise_bw import mlstm_chunkwise_bw
from xlstm_flax.kernels.triton.chunkwise_fw import mlstm_chunkwise_fw_result

# fp32: the interpreter multiplies fp32 exactly, only summation order differs (seen: <= 6e-6).
# fp16: the gate-weighted tiles and the states are rounded to fp16 before their dots (seen: 8e-4).
TOL = {jnp.float32: 3e-5, jnp.float16: 3e-3}
EPS = 1e-2
QK_SCALE = 0.3

CASES = [
    # (dtype, S, DHQK, DHV, with_states, loss on last states, forward tuning, backward tuning)
    (
        jnp.float32,
        32,
        16,
        24,
        True,
        False,
        dict(chunk_size_inter=16, chunk_size_intra=16),
        dict(chunk_size_recurrent=16, chunk_size_intra=16),
    ),
    (
        jnp.float32,
        64,
        24,
        40,
        False,
        True,
        dict(
            chunk_size_inter=16,
            chunk_size_intra=32,
            siz_b_L_parallel=32,
            siz_b_L_loop=16,
            siz_b_DH_parallel=16,
            siz_b_DH_loop=16,
        ),
        dict(
            chunk_size_recurrent=16,
            chunk_size_intra=32,
            block_steps_owned=32,
            block_steps_looped=16,
            block_dh_owned=16,
            block_dh_contracted=16,
        ),
    ),
    (
        jnp.float32,
        64,
        16,
        16,
        True,
        True,
        dict(chunk_size_inter=16, chunk_size_intra=64, siz_b_L_parallel=16, siz_b_L_loop=32),
        dict(chunk_size_recurrent=16, chunk_size_intra=64, block_steps_owned=16, block_steps_looped=32),
    ),
    (
        jnp.float16,
        32,
        16,
        16,
        True,
        False,
        dict(chunk_size_inter=16, chunk_size_intra=32),
        dict(chunk_size_recurrent=16, chunk_size_intra=32),
    ),
]


def _case_id(case):
    dtype, S, DHQK, DHV, with_states, last, fw_tuning, _ = case
    return (
        f"{jnp.dtype(dtype).name}-S{S}-{DHQK}x{DHV}-"
        f"{fw_tuning['chunk_size_inter']}of{fw_tuning['chunk_size_intra']}"
        + ("-states" if with_states else "")
        + ("-lastloss" if last else "")
    )


def _assert_gradients(got: dict, want: dict, tol: float):
    errors = {name: relative_error(got[name], want[name]) for name in GRAD_NAMES}
    assert all(np.all(np.isfinite(np.asarray(got[n], np.float32))) for n in GRAD_NAMES), "non-finite gradient"
    bad = {name: f"{err:.2e}" for name, err in errors.items() if not err <= tol}
    assert not bad, f"relative gradient errors above {tol}: {bad}"


@functools.partial(jax.jit, static_argnames=("fw_tuning", "bw_tuning"))
def _forward_backward(inputs, states, cot, fw_tuning, bw_tuning):
    """The Triton forward's residuals, then the Triton backward: the eight gradients."""
    fw = mlstm_chunkwise_fw_result(*inputs, *states, qk_scale=QK_SCALE, eps=EPS, **dict(fw_tuning))
    return mlstm_chunkwise_bw(
        *inputs,
        *states,
        fw.matH,
        fw.vecDen,
        fw.vecM,
        fw.vecNQ,
        cot["h"],
        cot.get("c"),
        cot.get("n"),
        cot.get("m"),
        qk_scale=QK_SCALE,
        eps=EPS,
        **dict(bw_tuning),
    )


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_backward_matches_reference_gradients(case):
    dtype, S, DHQK, DHV, with_states, last, fw_tuning, bw_tuning = case
    x = random_inputs(
        jax.random.PRNGKey(S + DHQK + DHV), B=1, NH=2, S=S, DHQK=DHQK, DHV=DHV, dtype=dtype, with_states=with_states
    )
    cot = random_cotangents(jax.random.PRNGKey(7), x, last_states=last)
    grads = _forward_backward(
        tuple(x[n] for n in ("q", "k", "v", "i", "f")),
        tuple(x.get(n) for n in ("c_initial", "n_initial", "m_initial")),
        cot,
        tuple(sorted(fw_tuning.items())),
        tuple(sorted(bw_tuning.items())),
    )
    for name, grad in zip(GRAD_NAMES, grads):
        expected = x[name].dtype if name in ("q", "k", "v", "i", "f") else jnp.float32
        assert grad.dtype == expected, f"d{name} has dtype {grad.dtype}, expected {expected}"
    _assert_gradients(dict(zip(GRAD_NAMES, grads)), reference_gradients(x, cot, QK_SCALE, EPS), TOL[dtype])


def test_test_data_exercises_both_denominator_branches():
    """den = max(|nq|, exp(-m)): the fp32 case with states must hit both branches, else the dnq mask
    (and the eps-only m-path) would go untested."""
    x = random_inputs(jax.random.PRNGKey(32 + 16 + 24), B=1, NH=2, S=32, DHQK=16, DHV=24, with_states=True)
    fw = mlstm_chunkwise_fw_result(
        *(x[n] for n in ("q", "k", "v", "i", "f", "c_initial", "n_initial", "m_initial")),
        qk_scale=QK_SCALE,
        eps=EPS,
        chunk_size_intra=16,
    )
    floor_active = np.asarray(jnp.abs(fw.vecNQ) <= jnp.exp(-fw.vecM))
    assert floor_active.any() and not floor_active.all()


@pytest.mark.parametrize("save_states", [False, True], ids=["recompute", "save_states"])
def test_registry_gradients_with_padding_and_last_states(save_states):
    """jax.grad through ``get_kernel("chunkwise--triton")`` (custom_vjp, S=40 padded to 48) under jit,
    with the chunk states recomputed in the backward (default) or kept from the forward."""
    x = random_inputs(jax.random.PRNGKey(3), B=1, NH=2, S=40, DHQK=16, DHV=16, with_states=True)
    cot = random_cotangents(jax.random.PRNGKey(4), x, last_states=True)
    kernel = get_kernel("chunkwise--triton")

    def loss(*args):
        q, k, v, i, f, c0, n0, m0 = args
        h, last = kernel(
            q,
            k,
            v,
            i,
            f,
            c_initial=c0,
            n_initial=n0,
            m_initial=m0,
            return_last_states=True,
            qk_scale=QK_SCALE,
            eps=EPS,
            chunk_size=16,
            save_states=save_states,
        )
        return linear_loss(h, last, cot)

    grads = jax.jit(jax.grad(loss, argnums=tuple(range(8))))(*(x[n] for n in GRAD_NAMES))
    _assert_gradients(dict(zip(GRAD_NAMES, grads)), reference_gradients(x, cot, QK_SCALE, EPS), TOL[jnp.float32])
