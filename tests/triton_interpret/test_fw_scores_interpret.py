"""The forward's materialised output stage (``materialise_scores=True``: scores kernel + output kernel) in
Triton's interpreter, against the float64 reference and against the single parallel kernel.

Run in their own process: ``TRITON_INTERPRET=1 .venv/bin/python -m pytest -q -p no:cacheprovider
tests/triton_interpret``. Tolerances vs the reference: those of test_fw_interpret.py (max |error| <=
tol * max(1, max |reference|)). Against the parallel kernel: the same math with the same roundings (the
scores are rounded to q's dtype before their dot in both): bit-identical with the same contraction blocks.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.grad_reference import GRAD_NAMES, linear_loss, random_cotangents, reference_gradients, relative_error
from tests.kernels.compare import assert_outputs_close, reference_outputs
from tests.kernels.triton_fw_checks import FwCase, check_forward, make_inputs
from tests.reference import random_inputs
from tests.segments import segment_layout
from tests.triton_interpret.test_fw_interpret import TOL
from xlstm_flax.kernels import get_kernel
from xlstm_flax.kernels.triton.chunkwise_fw import mlstm_chunkwise_fw_result

ON = dict(materialise_scores=True)
CASES = [
    # defaults otherwise: output rows = scores rows, one DHQK block (single dot), 16-wide contraction
    FwCase(jnp.float32, 1, 64, 16, 24, 16, 32, True, dict(ON, siz_b_L_parallel=32, siz_b_L_loop=16)),
    # DHQK in two blocks (the looped scores), output rows and contraction smaller than the score rows,
    # output columns in two blocks of DHV = 40
    FwCase(
        jnp.float32,
        1,
        64,
        24,
        40,
        16,
        32,
        True,
        dict(ON, siz_b_L_parallel=32, siz_b_L_loop=32, siz_b_DH_loop=16, siz_b_L_output=16, siz_b_K_output=16),
    ),
    FwCase(jnp.bfloat16, 1, 64, 16, 32, 16, 32, True, dict(ON, siz_b_L_output=16, siz_b_DH_parallel=16)),
    # output rows and contraction larger than the score rows (the scores kernel writes zero blocks for them)
    FwCase(
        jnp.float32,
        1,
        64,
        24,
        16,
        16,
        32,
        True,
        dict(ON, siz_b_L_parallel=16, siz_b_L_loop=16, siz_b_L_output=32, siz_b_K_output=32),
    ),
    FwCase(
        jnp.bfloat16, 2, 64, 32, 32, 16, 64, False, dict(ON, siz_b_L_parallel=16, siz_b_L_loop=16, siz_b_L_output=64)
    ),
    FwCase(jnp.float16, 1, 32, 24, 16, 16, 32, False, ON),
    # the library defaults at the xLSTM-7B head dims: 64-row scores blocks under 128-row output tiles; one
    # sequence of 2 heads: 64-row state tiles; 9 sequences (18 batch-head pairs): 128-row state tiles
    FwCase(jnp.bfloat16, 1, 512, 256, 512, 128, 256, True, {}),
    FwCase(jnp.bfloat16, 9, 256, 256, 512, 128, 256, True, {}),
]


@pytest.mark.parametrize("case", CASES, ids=FwCase.id)
def test_materialised_forward_matches_reference(case):
    check_forward(case, TOL[case.dtype], seed=case.S + case.DHQK + case.DHV + case.B + 1)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=lambda d: jnp.dtype(d).name)
def test_materialised_is_bit_identical_to_parallel_kernel(dtype):
    """With the parallel kernel's contraction blocks (16 for q C and for P v) the interpreter sums in the
    same order, so h, den, m and nq must be bit-identical: P is rounded to q's dtype exactly where the
    parallel kernel rounds its weighted scores. (On a GPU the tensor cores' summation order may differ.)"""
    x, states = make_inputs(21, dtype, 1, 64, 32, 32, True)
    tuning = dict(chunk_size_inter=16, chunk_size_intra=32, siz_b_L_parallel=32, siz_b_L_loop=16, siz_b_DH_loop=16)
    args = (x["q"], x["k"], x["v"], x["i"], x["f"], states["c0"], states["n0"], states["m0"])
    fused = mlstm_chunkwise_fw_result(*args, eps=1e-6, **tuning)
    split = mlstm_chunkwise_fw_result(*args, eps=1e-6, **tuning, materialise_scores=True, siz_b_K_output=16)
    assert np.all(np.isfinite(np.asarray(split.matH, np.float32))), "h: NaN = a score block never written"
    for name in ("matH", "vecDen", "vecM", "vecNQ"):
        np.testing.assert_array_equal(np.asarray(getattr(split, name)), np.asarray(getattr(fused, name)), name)


@pytest.mark.parametrize(
    "blocks",
    [
        dict(siz_b_L_parallel=32, siz_b_L_output=16, siz_b_K_output=16),  # output blocks within the score rows
        dict(siz_b_L_parallel=16, siz_b_L_output=32, siz_b_K_output=32),  # larger: the scores kernel's zero blocks
    ],
    ids=["output blocks smaller", "output blocks larger"],
)
def test_registry_entry_with_segments_values_and_gradients(blocks):
    """Document resets and S = 50 (padded to 64) through ``chunkwise--triton``: values and gradients (the
    backward takes den, m and nq from the materialised forward) against the float64 reference; tolerances
    as tests/triton_interpret/test_segments_interpret.py (fp32: 2e-5 values, 3e-5 relative gradients)."""
    S, eps = 50, 1e-2
    tuning = dict(ON, chunk_size=32, chunk_size_inter=16, chunk_size_recurrent=16, siz_b_L_loop=16, **blocks)
    x = random_inputs(jax.random.PRNGKey(S + 3), B=2, NH=1, S=S, DHQK=16, DHV=24, with_states=True)
    ids = segment_layout(S + 3, B=2, S=S, chunk=16, n_random=4)

    def call(args):
        return get_kernel("chunkwise--triton")(**args, return_last_states=True, eps=eps, segment_ids=ids, **tuning)

    out = jax.jit(call)(x)
    assert_outputs_close(out, reference_outputs(x, segment_ids=ids, eps=eps), 2e-5, 2e-5, "materialised packed")

    cot = random_cotangents(jax.random.PRNGKey(S + 4), x, last_states=True)
    names = [n for n in GRAD_NAMES if x.get(n) is not None]
    got = jax.jit(jax.grad(lambda a: linear_loss(*call(a), cot)))({n: x[n] for n in names})
    want = reference_gradients(x, cot, eps=eps, segment_ids=ids)
    for n in names:
        err = relative_error(got[n], want[n])
        assert err <= 3e-5, f"d loss / d {n}: relative error {err:.2e} > 3e-5"
