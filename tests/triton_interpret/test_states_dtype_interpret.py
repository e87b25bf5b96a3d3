"""Chunk-state storage in the input dtype (``states_in_input_dtype``) in Triton's interpreter.

Run in their own process: ``TRITON_INTERPRET=1 .venv/bin/python -m pytest -q -p no:cacheprovider
tests/triton_interpret``. 16-bit states: every consumer of C and dC casts them to the input dtype before
its dots, so h and all eight gradients are bit-identical with fp32 and 16-bit storage, and the last state
and dC0 stay fp32 (checked exactly).
"""

import jax
import jax.numpy as jnp
import numpy as np

from tests.grad_reference import GRAD_NAMES, linear_loss, random_cotangents
from tests.reference import random_inputs
from xlstm_flax.kernels import get_kernel
from xlstm_flax.kernels.triton import mlstm_chunkwise_fw


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
