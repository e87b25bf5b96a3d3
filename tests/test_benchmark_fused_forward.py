"""benchmarks/fused_forward.py (the forward with the chunk states kept in registers) lowers for CUDA on this
CPU machine at the xLSTM-7B head dims in bf16, with every tile the script times: its kernels compile for
sm_90a and use tensor cores. (Its numerics: tests/triton_interpret/test_fused_forward_interpret.py.)"""

import jax.numpy as jnp
import pytest

from benchmarks import fused_forward as experiment
from benchmarks.timing import mlstm_inputs
from tests.kernels.lowering import assert_compiled_for_sm90, lowered_triton_calls, skip_module_unless_lowerable

skip_module_unless_lowerable()


@pytest.mark.parametrize("tile", experiment.FUSED_TILES)
def test_fused_forward_lowers_for_sm90(tile):
    q, k, v, i, f, _ = mlstm_inputs((1, 2, 512, 256, 512), jnp.bfloat16, seed=0)
    payloads = lowered_triton_calls(lambda *x: experiment.fused_forward(*x, tile=tile), q, k, v, i, f)
    assert_compiled_for_sm90(payloads, (b"scores_fw_kernel", b"fused_walk_kernel"))
    assert any(b"nm_walk_kernel" in p for p in payloads)
