"""The document-reset variants of the Triton kernels (``*_segments_kernel``, HAS_SEGMENTS) lower for CUDA
on the CPU machine (jax-triton down to PTX for sm_90a), forward and backward through the registry
entry; without ``segment_ids`` none of them is launched. No GPU needed (docs/testing.md).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.kernels.lowering import assert_compiled_for_sm90, lowered_triton_calls, skip_module_unless_lowerable

skip_module_unless_lowerable()

from xlstm_flax.kernels import get_kernel  # noqa: E402
from xlstm_flax.kernels.triton import autograd  # noqa: E402

SEGMENT_KERNELS = (
    b"recurrent_fw_segments_kernel",
    b"parallel_fw_segments_kernel",
    b"recurrent_bw_segments_kernel",
    b"parallel_bw_dq_segments_kernel",
)
DK_DV = b"parallel_bw_dk_dv_segments_kernel"

CASES = [
    # (dtype, S, DHQK, DHV, tuning)
    (jnp.bfloat16, 256, 64, 128, {}),
    (
        jnp.float32,
        128,
        48,
        96,
        dict(chunk_size=64, chunk_size_inter=16, chunk_size_recurrent=32, block_steps_owned=32, block_steps_looped=16),
    ),
    # the xLSTM-7B head dims, chunk 256, with the parallel output kernel (their default, the materialised
    # scores, has its segments test in test_triton_fw_compile.py)
    (jnp.float16, 2048, 256, 512, dict(materialise_scores=False)),
    # the backward's materialised scores in fp32 (the default for 16-bit inputs only)
    (jnp.float32, 128, 32, 64, dict(chunk_size=64, materialise_bw_scores=True)),
]


def _backward_scores_launched(dtype, tuning: dict) -> bool:
    """Whether the backward launches its scores kernel: by default for 16-bit inputs."""
    return tuning.get("materialise_bw_scores", jnp.dtype(dtype).itemsize <= 2)


def _grad_payloads(dtype, S, DHQK, DHV, tuning, with_segments):
    sds = jax.ShapeDtypeStruct
    qk, v, gates = sds((1, 2, S, DHQK), dtype), sds((1, 2, S, DHV), dtype), sds((1, 2, S), jnp.float32)
    ids = np.repeat(np.arange(4, dtype=np.int32), S // 4)[None] if with_segments else None
    kernel = get_kernel("chunkwise--triton")

    def loss(q, k, v, i, f):
        h, last = kernel(q, k, v, i, f, return_last_states=True, segment_ids=ids, **tuning)
        return jnp.sum(h.astype(jnp.float32)) + sum(jnp.sum(x) for x in last)

    return lowered_triton_calls(jax.grad(loss, argnums=(0, 1, 2, 3, 4)), qk, qk, v, gates, gates)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{jnp.dtype(c[0]).name}-S{c[1]}-{c[2]}x{c[3]}")
def test_segment_kernels_lower_to_sm90_ptx(monkeypatch, case):
    monkeypatch.setattr(autograd, "_require_triton_backend", lambda: None)
    payloads = _grad_payloads(*case, with_segments=True)
    assert_compiled_for_sm90(payloads, SEGMENT_KERNELS[1:])
    assert len([p for p in payloads if SEGMENT_KERNELS[0] in p]) == 2, "states: forward + recompute"
    dk_dv = [p for p in payloads if DK_DV in p]
    assert len(dk_dv) == 2 and all(b".target sm_90a" in p and b"mma" in p for p in dk_dv), "dk, dv segment PTX"
    launches = 7 + _backward_scores_launched(case[0], case[-1])
    assert len(payloads) == launches, "every launch is a segment variant (2 states, h, dC, [dS and P,] dq, dk, dv)"
    assert all(b"segments_kernel" in p for p in payloads)


def test_no_segments_launch_no_segment_kernel(monkeypatch):
    monkeypatch.setattr(autograd, "_require_triton_backend", lambda: None)
    payloads = _grad_payloads(jnp.bfloat16, 128, 64, 64, {}, with_segments=False)
    assert len(payloads) == 8 and not any(b"segments_kernel" in p for p in payloads)


def test_triton_entry_rejects_bad_segment_ids():
    sds = jax.ShapeDtypeStruct
    qk, gates = sds((2, 1, 32, 16), jnp.float32), sds((2, 1, 32), jnp.float32)
    kernel = get_kernel("chunkwise--triton")
    with pytest.raises(ValueError, match=r"segment_ids has shape \(2, 31\), expected \(B, S\) = \(2, 32\)"):
        jax.eval_shape(lambda *a: kernel(*a, segment_ids=np.zeros((2, 31), np.int32)), qk, qk, qk, gates, gates)
    with pytest.raises(ValueError, match="segment_ids must be an integer array, got dtype float32"):
        jax.eval_shape(lambda *a: kernel(*a, segment_ids=np.zeros((2, 32), np.float32)), qk, qk, qk, gates, gates)
