"""The fused sLSTM Triton kernels on a CUDA GPU through jax-triton (``pytest -m gpu``): values, last state
and gradients of every input (pre, R, c0, n0, m0, h0) vs autodiff of the float64 scan, at the 350m
xLSTM[7:1] layer's head shape (4 heads of 256) and at odd shapes.

Error measure: max |error| / max |reference| per array (tests/kernels/compare.py).
* fp32 R (3xTF32 dots, about fp32 accuracy): values <= 1e-4, gradients <= 1e-3 (the mLSTM's fp32 bound).
* bf16 R: h_{t-1} and dg_t are rounded to bf16 (relative step 4e-3) before each product: <= 3e-2,
  the mLSTM GPU tests' bf16 bound.
"""

import jax.numpy as jnp
import pytest

from tests.kernels.slstm_checks import case_id, check_triton_case, make_inputs
from xlstm_flax.kernels.registry import triton_usable
from xlstm_flax.kernels.slstm import get_slstm_kernel

pytestmark = pytest.mark.gpu
if not triton_usable():
    pytest.skip("needs a CUDA GPU with jax_triton", allow_module_level=True)

TOL = {jnp.float32: (1e-4, 1e-3), jnp.bfloat16: (3e-2, 3e-2)}

CASES = [
    # (R dtype, B, S, NH, DH, initial states, tuning)
    (jnp.float32, 16, 256, 4, 256, True, {}),
    (jnp.bfloat16, 16, 256, 4, 256, True, {}),
    (jnp.bfloat16, 16, 512, 4, 256, False, dict(block_dh=128, block_k=32, num_warps=8)),
    (jnp.float32, 37, 128, 2, 48, True, dict(block_b=32, block_dh=16)),
    (jnp.bfloat16, 64, 128, 8, 64, True, dict(block_b=64)),
    (jnp.bfloat16, 16, 512, 4, 256, True, dict(split=8, block_dh=32, block_k=32)),  # group barriers
    (jnp.float32, 37, 128, 2, 48, True, dict(split=2, block_dh=16, block_k=16)),
]


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_triton_slstm_matches_reference_on_gpu(case):
    check_triton_case(case, TOL)


def test_split_that_cannot_be_resident_is_refused():
    args = make_inputs(0, 64, 4, 8, 64)
    with pytest.raises(ValueError, match="split=32 launches 1024 programs"):
        get_slstm_kernel("recurrent--triton")(args[0], args[1], split=32)
