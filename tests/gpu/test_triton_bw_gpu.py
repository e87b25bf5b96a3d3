"""The Triton backward on a CUDA GPU through jax-triton (``pytest -m gpu``): gradients of q, k, v, i, f,
c0, n0, m0 for random linear losses vs autodiff of the float64 reference, and agreement of the
registry entry's gradients with ``chunkwise--jax``'s.

Errors are relative Frobenius norms per gradient, ``||got - want|| / ||want||``:
* fp32 (3xTF32 dots, about fp32 accuracy): <= 1e-3 (the issue's bound).
* bf16: <= 3e-2. The kernels round the gate-weighted tiles and the fp32 states to bf16 (8-bit
  mantissa, relative step 4e-3) before their dots, and the gradients themselves are bf16.
* Triton vs chunkwise--jax, both bf16: <= 5e-2 (each side within about 2e-2 of the exact gradients).
"""

import functools

import jax
import jax.numpy as jnp
import pytest

from tests.grad_reference import GRAD_NAMES, linear_loss, random_cotangents, reference_gradients, relative_error
from tests.reference import random_inputs
from xlstm_flax.kernels import available_kernels, get_kernel
from xlstm_flax.kernels.registry import triton_usable

pytestmark = pytest.mark.gpu
if not triton_usable():
    pytest.skip("needs a CUDA GPU with jax_triton", allow_module_level=True)

TOL = {jnp.float32: 1e-3, jnp.bfloat16: 3e-2}
TRITON_VS_JAX_TOL = {jnp.float32: 1e-3, jnp.bfloat16: 5e-2}
EPS = 1e-4

CASES = [
    # (dtype, S, DHQK, DHV, with_states, loss on last states, tuning: forward and backward names)
    (jnp.float32, 256, 64, 64, True, False, dict(chunk_size=64)),
    (jnp.float32, 500, 48, 96, True, True, dict(chunk_size=128, chunk_size_inter=32, chunk_size_recurrent=32)),
    (
        jnp.float32,
        256,
        128,
        256,
        False,
        True,
        dict(chunk_size=128, siz_b_L_parallel=32, siz_b_DH_loop=32, block_steps_owned=32, block_dh_contracted=32),
    ),
    (jnp.bfloat16, 256, 64, 64, True, False, dict(chunk_size=64)),
    (jnp.bfloat16, 512, 96, 48, True, True, dict(chunk_size=64, chunk_size_inter=16, chunk_size_recurrent=16)),
    (jnp.bfloat16, 512, 256, 512, True, True, {}),
    (jnp.bfloat16, 512, 256, 512, True, True, dict(save_states=True)),  # chunk states kept from the forward
    (jnp.bfloat16, 512, 256, 512, True, True, dict(states_in_input_dtype=False)),  # fp32 C and dC
    # the backward's materialised scores (dS and P stored once per chunk)
    (jnp.float32, 256, 128, 256, True, True, dict(chunk_size=128, block_steps_owned=32, materialise_bw_scores=True)),
    (jnp.bfloat16, 512, 256, 512, True, True, dict(materialise_bw_scores=True)),
    (jnp.bfloat16, 512, 256, 512, True, True, dict(materialise_bw_scores=True, block_dh_owned=256)),
]


def _case_id(case):
    dtype, S, DHQK, DHV, with_states, last, tuning = case
    return (
        f"{jnp.dtype(dtype).name}-S{S}-{DHQK}x{DHV}"
        + ("-states" if with_states else "")
        + ("-lastloss" if last else "")
        + (f"-{len(tuning)}opts" if tuning else "")
        + ("-materialised" if tuning.get("materialise_bw_scores") else "")
    )


@functools.partial(jax.jit, static_argnames=("name", "tuning"))
def _gradients(x, cot, name, tuning):
    """jax.grad of the linear loss through the registry kernel ``name``, for the eight inputs."""
    kernel = get_kernel(name)
    names = [n for n in GRAD_NAMES if x.get(n) is not None]

    def loss(*args):
        a = dict(zip(names, args))
        h, last = kernel(
            a["q"],
            a["k"],
            a["v"],
            a["i"],
            a["f"],
            c_initial=a.get("c_initial"),
            n_initial=a.get("n_initial"),
            m_initial=a.get("m_initial"),
            return_last_states=True,
            eps=EPS,
            **dict(tuning),
        )
        return linear_loss(h.astype(jnp.float32), last, cot)

    grads = jax.grad(loss, argnums=tuple(range(len(names))))(*(x[n] for n in names))
    return dict(zip(names, grads))


def _assert_close(got: dict, want: dict, tol: float):
    errors = {name: relative_error(got[name], want[name]) for name in got}
    bad = {name: f"{err:.2e}" for name, err in errors.items() if not err <= tol}
    assert not bad, f"relative gradient errors above {tol}: {bad} (all: {errors})"


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_gradients_match_reference(case):
    dtype, S, DHQK, DHV, with_states, last, tuning = case
    x = random_inputs(
        jax.random.PRNGKey(S + DHQK), B=2, NH=2, S=S, DHQK=DHQK, DHV=DHV, dtype=dtype, with_states=with_states
    )
    cot = random_cotangents(jax.random.PRNGKey(S), x, last_states=last)
    got = _gradients(x, cot, "chunkwise--triton", tuple(sorted(tuning.items())))
    for name, grad in got.items():
        assert grad.dtype == x[name].dtype, f"d{name} has dtype {grad.dtype}, expected {x[name].dtype}"
    want = reference_gradients(x, cot, eps=EPS)
    _assert_close(got, {n: want[n] for n in got}, TOL[dtype])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("S, DHQK, DHV", [(1000, 64, 128), (2048, 256, 512)])
def test_gradients_agree_with_chunkwise_jax(dtype, S, DHQK, DHV):
    if "chunkwise--jax" not in available_kernels():
        pytest.skip("chunkwise--jax not registered")
    x = random_inputs(jax.random.PRNGKey(S), B=1, NH=2, S=S, DHQK=DHQK, DHV=DHV, dtype=dtype, with_states=True)
    cot = random_cotangents(jax.random.PRNGKey(S + 1), x, last_states=True)
    got = _gradients(x, cot, "chunkwise--triton", ())
    want = _gradients(x, cot, "chunkwise--jax", ())
    _assert_close(got, want, TRITON_VS_JAX_TOL[dtype])
