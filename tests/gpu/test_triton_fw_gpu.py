"""The Triton forward on a CUDA GPU through jax-triton: the interpreter checks at GPU sizes in fp32
and bf16, plus agreement of the registry entry with ``chunkwise--jax`` (``pytest -m gpu``).

Tolerances (relative to each output's largest reference magnitude, tests/kernels/triton_fw_checks.py):
fp32 dots use 3xTF32 (about fp32); bf16 casts the states and weighted scores to bf16 (8-bit mantissa)
before its dots and rounds h to bf16.
"""

import jax
import jax.numpy as jnp
import pytest

from tests.kernels.triton_fw_checks import FwCase, assert_close, check_forward, make_inputs

pytestmark = pytest.mark.gpu


def _gpu_and_jax_triton() -> bool:
    try:
        if not jax.devices("gpu"):
            return False
        from xlstm_flax.kernels.triton import compat

        compat.import_jax_triton()
    except (RuntimeError, ImportError):
        return False
    return True


if not _gpu_and_jax_triton():
    pytest.skip("needs a CUDA GPU with jax_triton", allow_module_level=True)

TOL = {jnp.float32: 1e-4, jnp.bfloat16: 3e-2}
SEVEN_B_HEADS = (jnp.bfloat16, 1, 512, 256, 512, 128, 256, True)  # dtype .. with_states at the 7B head dims

CASES = [
    FwCase(jnp.float32, 2, 256, 64, 64, 64, 64, False, {}),
    FwCase(jnp.float32, 1, 512, 48, 96, 32, 128, True, {}),
    FwCase(jnp.float32, 1, 256, 128, 256, 64, 128, True, dict(siz_b_L_parallel=32, siz_b_DH_loop=32)),
    FwCase(jnp.bfloat16, 2, 256, 64, 64, 64, 64, False, {}),
    FwCase(jnp.bfloat16, 1, 512, 96, 48, 16, 64, True, {}),
    FwCase(jnp.bfloat16, 1, 512, 256, 512, 128, 256, True, {}),
    FwCase(jnp.bfloat16, 1, 256, 128, 128, 128, 128, False, dict(siz_b_L_parallel=128, num_warps_intra=8)),
    FwCase(jnp.bfloat16, 1, 512, 256, 512, 128, 256, True, dict(states_in_input_dtype=False)),
    # the materialised output stage (scores kernel + output kernel): defaults, one q k^T dot with 64-row
    # output tiles, fp32, and small non-power-of-two head dims
    FwCase(jnp.bfloat16, 1, 512, 256, 512, 256, 256, True, dict(materialise_scores=True)),
    FwCase(
        *SEVEN_B_HEADS,
        dict(materialise_scores=True, siz_b_DH_loop=256, siz_b_L_output=64, num_warps_output=4, num_stages_output=4),
    ),
    FwCase(jnp.float32, 1, 256, 128, 256, 64, 128, True, dict(materialise_scores=True)),
    FwCase(jnp.bfloat16, 1, 512, 96, 48, 16, 64, True, dict(materialise_scores=True)),
    # 64-row scores blocks under 128-row output tiles (the scores kernel also writes the zero blocks above
    # the diagonal that the output tiles read): 4 % faster at DHQK = 256 (h100_session25_2026-12-05.md)
    FwCase(*SEVEN_B_HEADS, dict(siz_b_L_parallel=64, siz_b_L_output=128, num_warps_intra=4, num_stages_intra=2)),
]


@pytest.mark.parametrize("case", CASES, ids=FwCase.id)
def test_forward_matches_reference(case):
    check_forward(case, TOL[case.dtype], seed=case.S + case.DHQK + case.DHV)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("S, DHQK, DHV", [(1000, 64, 128), (333, 48, 96), (2048, 256, 512)])
def test_registry_entry_agrees_with_chunkwise_jax(dtype, S, DHQK, DHV):
    from xlstm_flax.kernels import available_kernels, get_kernel

    if "chunkwise--jax" not in available_kernels():
        pytest.skip("chunkwise--jax not registered")
    x, states = make_inputs(S + DHQK, dtype, 2, S, DHQK, DHV, True, NH=3)
    kwargs = dict(c_initial=states["c0"], n_initial=states["n0"], m_initial=states["m0"], return_last_states=True)
    h, last = jax.jit(lambda *a: get_kernel("chunkwise--triton")(*a, **kwargs))(*x.values())
    ref_h, ref_last = jax.jit(lambda *a: get_kernel("chunkwise--jax")(*a, **kwargs))(*x.values())
    assert h.dtype == dtype and h.shape == ref_h.shape
    assert_close("h", h, ref_h, TOL[dtype])
    for name, got, want in zip(("C", "n", "m"), last, ref_last):
        assert_close(f"last {name}", got, want, TOL[dtype])
