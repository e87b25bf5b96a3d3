"""The opt-in fused forward (``fused_fw_kernel``, ``fused_fw_segments_kernel``) and the chunk-state dtype
option lower for CUDA on the CPU machine (jax-triton down to PTX for sm_90a) through the registry entry,
forward and backward; bad values of the two flags raise ValueError naming them. No GPU needed.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.kernels.lowering import assert_compiled_for_sm90, lowered_triton_calls, skip_module_unless_lowerable

skip_module_unless_lowerable()

from xlstm_flax.kernels import get_kernel  # noqa: E402
from xlstm_flax.kernels.triton import autograd  # noqa: E402

CASES = [
    # (dtype, S, DHQK, DHV, with segments, tuning)
    (jnp.bfloat16, 2048, 256, 512, False, {}),  # the xLSTM-7B head dims, chunk 256, fused defaults
    (jnp.bfloat16, 2048, 128, 256, True, dict(siz_b_DH_parallel=128, num_warps_intra=4, siz_b_L_loop=32)),
    (jnp.float32, 128, 48, 96, False, dict(chunk_size=64, siz_b_L_parallel=32, siz_b_DH_parallel=32)),
    (jnp.float16, 256, 64, 64, True, dict(states_in_input_dtype=False, num_stages_intra=3, save_states=True)),
]


def _case_id(case):
    dtype, S, DHQK, DHV, segments, tuning = case
    return f"{jnp.dtype(dtype).name}-S{S}-{DHQK}x{DHV}{'-segments' if segments else ''}-{len(tuning)}opts"


def _grad(dtype, S, DHQK, DHV, segments, tuning):
    """The loss gradient of the registry entry with ``fused_forward=True`` (h and the last states)."""
    ids = np.repeat(np.arange(4, dtype=np.int32), S // 4)[None] if segments else None
    kernel = get_kernel("chunkwise--triton")

    def loss(q, k, v, i, f):
        h, last = kernel(q, k, v, i, f, return_last_states=True, segment_ids=ids, fused_forward=True, **tuning)
        return jnp.sum(h.astype(jnp.float32)) + sum(jnp.sum(x) for x in last)

    sds = jax.ShapeDtypeStruct
    qk, v, gates = sds((1, 2, S, DHQK), dtype), sds((1, 2, S, DHV), dtype), sds((1, 2, S), jnp.float32)
    return jax.grad(loss, argnums=(0, 1, 2, 3, 4)), (qk, qk, v, gates, gates)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_fused_forward_lowers_to_sm90_ptx(monkeypatch, case):
    monkeypatch.setattr(autograd, "_require_triton_backend", lambda: None)
    loss_grad, args = _grad(*case)
    payloads = lowered_triton_calls(loss_grad, *args)
    suffix = b"_segments_kernel" if case[4] else b"_kernel"
    fused, states = b"fused_fw" + suffix, b"recurrent_fw" + suffix
    saved = case[5].get("save_states", False)  # the fused forward's states kept: no recomputation
    assert_compiled_for_sm90(payloads, (fused,) if saved else (fused, states))
    assert not any(b"parallel_fw" in p for p in payloads), "the fused forward replaces the parallel kernel"
    assert not saved or not any(states in p for p in payloads), "saved states must not be recomputed"
    assert len(payloads) == 6 - saved, "fused forward, (recomputed states,) dC, dq, dk, dv"


@pytest.mark.parametrize("flag", ["states_in_input_dtype", "fused_forward"])
def test_flags_must_be_bools(flag):
    sds = jax.ShapeDtypeStruct
    qk, gates = sds((1, 1, 32, 16), jnp.bfloat16), sds((1, 1, 32), jnp.float32)
    with pytest.raises(ValueError, match=re.escape(f"{flag} must be True or False, got 1")):
        jax.eval_shape(lambda *a: get_kernel("chunkwise--triton")(*a, **{flag: 1}), qk, qk, qk, gates, gates)
