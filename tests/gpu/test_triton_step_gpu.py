"""``"step--triton"`` on a CUDA GPU through jax-triton (``pytest -m gpu``): 8 chained steps against the
float64 reference at the xLSTM-7B head dims (256 x 512, 16 programs per head) and at small odd ones
(tests/kernels/step_checks.py; fp32: 1e-5, bf16 h: 8e-3 of the largest reference value); and greedy
decoding of a small fp32 model gives the same tokens with ``step_kernel="step--triton"`` as with
``"step--jax"``."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.kernels.step_checks import check_chained_steps
from xlstm_flax.kernels.registry import triton_usable
from xlstm_flax.model import xLSTMLMModel
from xlstm_flax.presets import get_preset
from xlstm_flax.sampling import generate

pytestmark = pytest.mark.gpu
if not triton_usable():
    pytest.skip("needs a CUDA GPU with jax_triton", allow_module_level=True)


@pytest.mark.parametrize(
    "dims, dtype, h_tol",
    [
        ((2, 8, 256, 512), jnp.float32, 1e-5),
        ((2, 8, 256, 512), jnp.bfloat16, 8e-3),
        ((3, 2, 48, 80), jnp.float32, 1e-5),
    ],
)
def test_chained_steps_match_the_float64_reference(dims, dtype, h_tol):
    check_chained_steps(dims, dtype, h_tol)


def test_greedy_decoding_matches_step_jax():
    config = get_preset("tiny")
    tokens = {}
    for step_kernel in ("step--jax", "step--triton"):
        mlstm = dataclasses.replace(config.mlstm, step_kernel=step_kernel)
        model = xLSTMLMModel(dataclasses.replace(config, mlstm=mlstm), rngs=nnx.Rngs(0))
        prompt = jax.random.randint(jax.random.key(1), (2, 12), 0, config.vocab_size)
        tokens[step_kernel] = np.asarray(generate(model, prompt, 24, key=jax.random.key(2), temperature=0.0).tokens)
    np.testing.assert_array_equal(tokens["step--triton"], tokens["step--jax"])
