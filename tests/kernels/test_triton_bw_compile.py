"""The Triton backward lowers for CUDA on the CPU machine (jax-triton down to PTX for sm_90a), and bad
arguments raise ValueError naming the problem. No GPU needed (docs/testing.md).

One case lowers ``jax.grad`` through the registry entry (forward + custom_vjp backward); the sweep
lowers the backward alone (states recompute + the backward kernels) and covers rather than
multiplies: chunk sizes 16..256 (inter < intra included), block sizes 16..256, warps 2..8, stages
1..3, fp32/bf16/fp16 and head dims 16, 48, 64, 96, 128, 256, 512. About a minute on 2 CPU cores with
an empty Triton cache.
"""

import re

import jax
import jax.numpy as jnp
import pytest

from tests.kernels.lowering import assert_compiled_for_sm90, lowered_triton_calls, skip_module_unless_lowerable

skip_module_unless_lowerable()

from xlstm_flax.kernels import common, get_kernel  # noqa: E402
from xlstm_flax.kernels.triton import autograd  # noqa: E402
from xlstm_flax.kernels.triton.chunkwise_bw import mlstm_chunkwise_bw  # noqa: E402
from xlstm_flax.kernels.triton.tuning import resolve_bw_config  # noqa: E402

BW_KERNELS = (b"recurrent_bw_kernel", b"parallel_bw_dq_kernel")  # one launch each
DK_DV_KERNEL = b"parallel_bw_dk_dv_kernel"  # launched twice: dk, then dv


def assert_backward_compiled(payloads: list[bytes], other_kernels: tuple) -> None:
    assert_compiled_for_sm90(payloads, BW_KERNELS + other_kernels)
    dk_dv = [p for p in payloads if DK_DV_KERNEL in p]
    assert len(dk_dv) == 2, f"parallel_bw_dk_dv_kernel in {len(dk_dv)} lowered calls, expected 2 (dk, dv)"
    assert all(b".target sm_90a" in p and b"mma" in p for p in dk_dv), "dk/dv PTX not sm_90a tensor-core code"


def _bw_shapes(dtype, S, DHQK, DHV, B=1, NH=2):
    """Abstract residuals and cotangents of one backward call (initial states given)."""
    sds = jax.ShapeDtypeStruct
    qk, v = sds((B, NH, S, DHQK), dtype), sds((B, NH, S, DHV), dtype)
    vec, state = sds((B, NH, S), jnp.float32), sds((B, NH, DHQK, DHV), jnp.float32)
    n, m = sds((B, NH, DHQK), jnp.float32), sds((B, NH), jnp.float32)
    return (qk, qk, v, vec, vec, state, n, m, v, vec, vec, vec, v, state, n, m)


def _backward(**tuning):
    return lambda *args: mlstm_chunkwise_bw(*args, eps=1e-6, **tuning)


GRAD_OPTIONS = [{}, dict(save_states=True), dict(save_states=True, states_in_input_dtype=False)]


@pytest.mark.parametrize("options", GRAD_OPTIONS, ids=["recompute", "save_states", "save_fp32_states"])
def test_registry_gradient_lowers_forward_and_backward(monkeypatch, options):
    """jax.grad through get_kernel("chunkwise--triton") (its GPU check off: this machine has none);
    the chunk states are computed twice (forward, backward) unless the forward's are saved (bf16 C and
    dC by default, fp32 with states_in_input_dtype=False)."""
    monkeypatch.setattr(autograd, "_require_triton_backend", lambda: None)
    sds = jax.ShapeDtypeStruct
    qk, gates = sds((1, 2, 128, 64), jnp.bfloat16), sds((1, 2, 128), jnp.float32)
    kernel = get_kernel("chunkwise--triton")

    def loss(q, k, v, i, f):
        return jnp.sum(kernel(q, k, v, i, f, **options).astype(jnp.float32))

    payloads = lowered_triton_calls(jax.grad(loss, argnums=(0, 1, 2, 3, 4)), qk, qk, qk, gates, gates)
    assert_backward_compiled(payloads, (b"parallel_fw_kernel",))
    recurrent_fw = [p for p in payloads if b"recurrent_fw_kernel" in p]
    saved = options.get("save_states", False)
    assert len(recurrent_fw) == (1 if saved else 2), "chunk-state kernel launches (forward + recompute)"


def test_registry_entry_checks_backward_options_before_any_work():
    """Backward names go to the backward's config, checked when the entry is called (no gradient taken)."""
    sds = jax.ShapeDtypeStruct
    qk, gates = sds((1, 2, 64, 16), jnp.float32), sds((1, 2, 64), jnp.float32)
    kernel = get_kernel("chunkwise--triton")
    with pytest.raises(ValueError, match=re.escape("block_steps_owned=24 must be a power of two")):
        jax.eval_shape(lambda *a: kernel(*a, block_steps_owned=24), qk, qk, qk, gates, gates)
    with pytest.raises(ValueError, match=re.escape("chunk_size_recurrent=64 must be <= chunk_size_intra=32")):
        jax.eval_shape(lambda *a: kernel(*a, chunk_size=32, chunk_size_recurrent=64), qk, qk, qk, gates, gates)


@pytest.mark.parametrize("flag, value", [("save_states", "yes"), ("states_in_input_dtype", 1)])
def test_registry_rejects_non_bool_flags(flag, value):
    sds = jax.ShapeDtypeStruct
    qk, gates = sds((1, 2, 32, 16), jnp.bfloat16), sds((1, 2, 32), jnp.float32)
    with pytest.raises(ValueError, match=re.escape(f"{flag} must be True or False, got {value!r}")):
        jax.eval_shape(lambda *a: get_kernel("chunkwise--triton")(*a, **{flag: value}), qk, qk, qk, gates, gates)


SWEEP = [
    # (dtype, S, DHQK, DHV, tuning)
    (jnp.bfloat16, 2048, 256, 512, {}),  # the xLSTM-7B head dims' bf16 defaults (chunk 256, recurrent 256, 3 stages)
    (
        jnp.float32,
        64,
        48,
        96,
        dict(
            chunk_size_recurrent=16,
            chunk_size_intra=64,
            block_steps_owned=16,
            block_steps_looped=32,
            block_dh_owned=32,
            block_dh_contracted=16,
        ),
    ),
    (
        jnp.float16,
        128,
        96,
        48,
        dict(
            chunk_size_recurrent=32,
            chunk_size_intra=128,
            block_steps_owned=32,
            block_steps_looped=64,
            block_dh_owned=64,
            block_dh_contracted=32,
            block_dhqk_recurrent=32,
            block_dhv_recurrent=16,
        ),
    ),
    (
        jnp.bfloat16,
        256,
        128,
        256,
        dict(
            chunk_size_recurrent=64,
            chunk_size_intra=256,
            block_steps_owned=128,
            block_steps_looped=64,
            block_dh_owned=128,
            block_dh_contracted=128,
            block_dhqk_recurrent=128,
            block_dhv_recurrent=128,
            num_warps_parallel=8,
            num_stages_parallel=3,
            num_warps_recurrent=8,
            num_stages_recurrent=3,
        ),
    ),
    (
        jnp.bfloat16,
        32,
        16,
        16,
        dict(
            chunk_size_recurrent=16,
            chunk_size_intra=16,
            num_warps_parallel=2,
            num_stages_parallel=1,
            num_warps_recurrent=2,
            num_stages_recurrent=1,
        ),
    ),
    (  # one stage: with three, this dq tile needs 480 KiB of shared memory (sm_90: 227 KiB per block)
        jnp.bfloat16,
        128,
        512,
        512,
        dict(block_dh_owned=256, block_dh_contracted=256, block_dhv_recurrent=128, num_stages_parallel=1),
    ),
]


def _case_id(case):
    dtype, S, DHQK, DHV, tuning = case
    return f"{jnp.dtype(dtype).name}-S{S}-{DHQK}x{DHV}-" + ("defaults" if not tuning else f"{len(tuning)}opts")


@pytest.mark.parametrize("case", SWEEP, ids=_case_id)
def test_backward_lowers_to_sm90_ptx(case):
    dtype, S, DHQK, DHV, tuning = case
    payloads = lowered_triton_calls(_backward(**tuning), *_bw_shapes(dtype, S, DHQK, DHV))
    assert_backward_compiled(payloads, (b"recurrent_fw_kernel",))


def test_backward_rejects_bad_arguments():
    args = _bw_shapes(jnp.bfloat16, 64, 64, 64)
    bad = [
        (dict(chunk_size_intra=48), "chunk_size_intra=48 must be a power of two"),
        (dict(chunk_size_recurrent=64, chunk_size_intra=32), "chunk_size_recurrent=64 must be <= chunk_size_intra=32"),
        (dict(block_steps_owned=128), "block_steps_owned=128"),
        (dict(siz_b_LQ=16), "unknown tuning option(s) ['siz_b_LQ']"),
        (dict(siz_b_DH_parallel=64), "unknown tuning option(s) ['siz_b_DH_parallel'] for mlstm_chunkwise_bw"),
    ]
    for tuning, message in bad:
        with pytest.raises(ValueError, match=re.escape(message)):
            jax.eval_shape(_backward(**tuning), *args)
    wrong_dh = args[:12] + (jax.ShapeDtypeStruct((1, 2, 64, 32), jnp.bfloat16),) + args[13:]
    with pytest.raises(ValueError, match=r"matDeltaH has shape \(1, 2, 64, 32\)"):
        jax.eval_shape(_backward(), *wrong_dh)


def test_backward_materialises_scores_by_default_for_16bit_inputs():
    """The 7B head dims' bf16 defaults launch the scores kernel (dq, dk, dv read its buffers); with
    ``materialise_bw_scores=False``, and by default for fp32, they recompute the scores instead."""
    args = _bw_shapes(jnp.bfloat16, 2048, 256, 512)
    payloads = lowered_triton_calls(_backward(), *args)
    assert_backward_compiled(payloads, (b"recurrent_fw_kernel", b"scores_bw_kernel"))
    assert not any(
        b"scores_bw_kernel" in p for p in lowered_triton_calls(_backward(materialise_bw_scores=False), *args)
    )
    for dtype, expected in ((jnp.float16, True), (jnp.bfloat16, True), (jnp.float32, False)):
        assert resolve_bw_config(common.Dims(1, 2, 256, 64, 128), dtype).materialise_bw_scores is expected, dtype
