"""Chunk-state storage in the input dtype (``states_in_input_dtype``) and the opt-in fused forward
(``fused_forward``) in Triton's interpreter.

Run in their own process: ``TRITON_INTERPRET=1 .venv/bin/python -m pytest -q -p no:cacheprovider
tests/triton_interpret``. 16-bit states: every consumer of C and dC casts them to the input dtype before
its dots, so h and all eight gradients are bit-identical with fp32 and 16-bit storage, and the last state
and dC0 stay fp32 (checked exactly). Fused forward: against the float64 reference with the tolerances of
test_fw_interpret.py (values) and test_segments_interpret.py (packed values and gradients, fp32).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.grad_reference import GRAD_NAMES, linear_loss, random_cotangents, reference_gradients, relative_error
from tests.kernels.compare import assert_outputs_close, reference_outputs
from tests.kernels.triton_fw_checks import FwCase, check_forward
from tests.reference import random_inputs
from tests.segments import segment_layout
from xlstm_flax.kernels import get_kernel
from xlstm_flax.kernels.triton import mlstm_chunkwise_fw

FUSED_CASES = [  # tolerances as test_fw_interpret.py: fp32 2e-5, bf16 2e-2
    # 3 masked DHV tiles per head (only the first stores n, m), 2 row blocks of 16 per chunk of 32
    (FwCase(jnp.float32, 2, 64, 24, 40, 16, 32, True, dict(siz_b_L_parallel=16, siz_b_DH_parallel=16)), 2e-5),
    (FwCase(jnp.bfloat16, 1, 32, 16, 16, 16, 32, False, {}), 2e-2),
]


@pytest.mark.parametrize("case, tol", FUSED_CASES, ids=[c[0].id() for c in FUSED_CASES])
def test_fused_forward_matches_reference(case, tol):
    """h, den, m, the last states and the stored chunk states of the fused kernel."""
    check_forward(case._replace(tuning=dict(case.tuning, fused_forward=True)), tol, seed=case.S + case.DHV)


def _kernel(x, **options):
    return get_kernel("chunkwise--triton")(**x, return_last_states=True, eps=1e-2, **options)


def test_16bit_states_give_identical_values_and_gradients():
    """fp16 inputs: forward and backward with C, dC stored in fp16 and in fp32 agree bit for bit."""
    x = random_inputs(jax.random.PRNGKey(5), B=1, NH=2, S=64, DHQK=16, DHV=24, dtype=jnp.float16, with_states=True)
    cot = random_cotangents(jax.random.PRNGKey(6), x, last_states=True)
    names = [n for n in GRAD_NAMES if x.get(n) is not None]
    tuning = dict(chunk_size=32, chunk_size_inter=16, chunk_size_recurrent=16)

    def values_and_grads(in_dtype):
        def loss(args):
            return linear_loss(*_kernel(dict(x, **args), states_in_input_dtype=in_dtype, **tuning), cot)

        return _kernel(x, states_in_input_dtype=in_dtype, **tuning), jax.grad(loss)({n: x[n] for n in names})

    got, _ = jax.tree_util.tree_flatten_with_path(jax.jit(lambda: values_and_grads(True))())
    want = jax.tree.leaves(jax.jit(lambda: values_and_grads(False))())
    for (path, a), b in zip(got, want, strict=True):
        name = jax.tree_util.keystr(path)
        assert a.dtype == b.dtype, f"{name}: dtype {a.dtype} != {b.dtype}"
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=name)


def test_state_dtypes_follow_the_option():
    """All-states C in q's dtype by default, fp32 on request; n, m and the last C fp32 either way."""
    x = random_inputs(jax.random.PRNGKey(8), B=1, NH=1, S=32, DHQK=16, DHV=16, dtype=jnp.bfloat16)
    for in_dtype, want in ((None, jnp.bfloat16), (False, jnp.float32)):
        _, _, _, last, (c_all, n_all, m_all) = mlstm_chunkwise_fw(
            *(x[n] for n in "qkvif"), return_last_states=True, return_all_states=True, states_in_input_dtype=in_dtype
        )
        assert c_all.dtype == want and n_all.dtype == m_all.dtype == jnp.float32
        assert all(s.dtype == jnp.float32 for s in last), "last states must stay fp32"


def test_fused_forward_with_segments_matches_reference():
    """fused_fw_segments_kernel: packed values and gradients (backward through the states recomputed by
    the recurrent kernel) vs the float64 reference; fp32, tolerances of test_segments_interpret.py."""
    S = 64
    x = random_inputs(jax.random.PRNGKey(21), B=2, NH=1, S=S, DHQK=16, DHV=16, with_states=True)
    ids = segment_layout(S, B=2, S=S, chunk=16, n_random=5)
    tuning = dict(chunk_size=32, fused_forward=True, siz_b_L_parallel=16, siz_b_L_loop=16, chunk_size_inter=16)
    out = jax.jit(lambda x: _kernel(x, segment_ids=ids, **tuning))(x)
    assert_outputs_close(out, reference_outputs(x, segment_ids=ids, eps=1e-2), 2e-5, 2e-5, "fused packed")

    cot = random_cotangents(jax.random.PRNGKey(22), x, last_states=True)
    names = [n for n in GRAD_NAMES if x.get(n) is not None]
    got = jax.jit(jax.grad(lambda a: linear_loss(*_kernel(dict(x, **a), segment_ids=ids, **tuning), cot)))(
        {n: x[n] for n in names}
    )
    want = reference_gradients(x, cot, eps=1e-2, segment_ids=ids)
    for n in names:
        err = relative_error(got[n], want[n])
        assert err <= 3e-5, f"d loss / d {n}: relative error {err:.2e} > 3e-5"
