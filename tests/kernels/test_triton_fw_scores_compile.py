"""The forward's materialised output stage (``materialise_scores=True``) lowers for CUDA on the CPU machine
(jax-triton down to PTX for sm_90a) at the xLSTM-7B head dims (256 x 512) and at 128 x 256, with and
without document resets, and its tuning rules raise ValueError naming them. No GPU needed
(docs/testing.md). Numerics: tests/triton_interpret/test_fw_scores_interpret.py.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.kernels.lowering import assert_compiled_for_sm90, lowered_triton_calls, skip_module_unless_lowerable

skip_module_unless_lowerable()

from xlstm_flax.kernels import get_kernel  # noqa: E402
from xlstm_flax.kernels.triton import autograd, mlstm_chunkwise_fw  # noqa: E402

KERNEL_NAMES = (b"recurrent_fw_kernel", b"scores_fw_kernel", b"output_fw_kernel")
ON = dict(materialise_scores=True)
SWEEP = [
    # (dtype, S, DHQK, DHV, tuning): chunk 256 from S = 2048 on
    (jnp.bfloat16, 2048, 256, 512, ON),  # defaults: 128-row scores over 64-wide DHQK blocks, 128 x 256 output
    (  # one q k^T dot over all of DHQK; 64 x 256 output tiles, 4 warps, 4 stages
        jnp.bfloat16,
        2048,
        256,
        512,
        dict(ON, siz_b_DH_loop=256, siz_b_L_output=64, num_warps_output=4, num_stages_output=4),
    ),
    (jnp.bfloat16, 2048, 128, 256, dict(ON, siz_b_DH_parallel=128, siz_b_K_output=32)),
    (jnp.float32, 2048, 256, 512, ON),  # fp32 defaults: 64-row scores, 64 x 128 output tiles
    (jnp.float16, 128, 48, 96, dict(ON, siz_b_L_parallel=64, siz_b_L_output=32, siz_b_K_output=16)),
]


def _shapes(dtype, S, DHQK, DHV, B=1, NH=2):
    qk = jax.ShapeDtypeStruct((B, NH, S, DHQK), dtype)
    gates = jax.ShapeDtypeStruct((B, NH, S), jnp.float32)
    return qk, qk, jax.ShapeDtypeStruct((B, NH, S, DHV), dtype), gates, gates


def _forward(**tuning):
    def fw(q, k, v, i, f):
        h, den, m, last, _ = mlstm_chunkwise_fw(q, k, v, i, f, return_last_states=True, **tuning)
        return h, den, m, last

    return fw


def _case_id(case):
    dtype, S, DHQK, DHV, tuning = case
    return f"{jnp.dtype(dtype).name}-S{S}-{DHQK}x{DHV}-{len(tuning)}opts"


@pytest.mark.parametrize("case", SWEEP, ids=_case_id)
def test_materialised_forward_lowers_to_sm90_ptx(case):
    dtype, S, DHQK, DHV, tuning = case
    payloads = lowered_triton_calls(_forward(**tuning), *_shapes(dtype, S, DHQK, DHV))
    assert_compiled_for_sm90(payloads, KERNEL_NAMES)
    assert len(payloads) == 3 and not any(b"parallel_fw_kernel" in p for p in payloads)


def test_materialised_segments_forward_and_backward_lower(monkeypatch):
    """With ``segment_ids`` the scores kernel's segment variant runs (the output kernel has none: resets
    are in P and the inter weights); the backward launches as without the option."""
    monkeypatch.setattr(autograd, "_require_triton_backend", lambda: None)
    S = 512
    ids = np.repeat(np.arange(4, dtype=np.int32), S // 4)[None]
    kernel = get_kernel("chunkwise--triton")

    def loss(q, k, v, i, f):
        h, last = kernel(q, k, v, i, f, return_last_states=True, segment_ids=ids, materialise_scores=True)
        return jnp.sum(h.astype(jnp.float32)) + sum(jnp.sum(x) for x in last)

    payloads = lowered_triton_calls(jax.grad(loss, argnums=(0, 1, 2, 3, 4)), *_shapes(jnp.bfloat16, S, 128, 256))
    assert_compiled_for_sm90(payloads, (b"scores_fw_segments_kernel", b"output_fw_kernel"))
    assert len(payloads) == 8, "2 states, scores, output, dC, dq, dk, dv"
    assert not any(b"parallel_fw" in p for p in payloads)


INVALID = [
    # (tuning, message the ValueError must contain); S = 64, DHQK = DHV = 64, chunk 64
    (dict(siz_b_L_parallel=32, siz_b_L_output=64), "siz_b_L_output=64 must be <= siz_b_L_parallel=32"),
    (dict(siz_b_L_parallel=16, siz_b_K_output=32), "siz_b_K_output=32 must be <= siz_b_L_parallel=16"),
    (dict(siz_b_L_output=24), "siz_b_L_output=24 must be a power of two in [16, 64]"),
    (dict(siz_b_K_output=128), "siz_b_K_output=128 must be a power of two in [16, 64]"),
    (dict(materialise_scores=1), "materialise_scores must be True or False, got 1"),
    (dict(num_warps_output=3), "num_warps_output=3"),
    (dict(num_stages_output=9), "num_stages_output=9"),
]


@pytest.mark.parametrize("tuning, message", INVALID, ids=[c[1][:26] for c in INVALID])
def test_invalid_output_stage_options_raise(tuning, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        jax.eval_shape(_forward(**{**ON, **tuning}), *_shapes(jnp.bfloat16, 64, 64, 64))
