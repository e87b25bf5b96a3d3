"""The fused sLSTM Triton kernels lower for CUDA on the CPU machine (jax-triton down to PTX for sm_90a,
forward and backward through ``jax.grad`` of the registry entry), and bad arguments raise ValueError
naming the problem. No GPU needed. The sweep covers every R dtype, head dims 16..512 (48: padded),
every tile option, warps / stages and the split of a head over several programs.
"""

import re

import jax
import jax.numpy as jnp
import pytest

from tests.kernels.lowering import assert_compiled_for_sm90, lowered_triton_calls, skip_module_unless_lowerable

skip_module_unless_lowerable()

from xlstm_flax.kernels.slstm import GateInputs, get_slstm_kernel, triton_launch  # noqa: E402
from xlstm_flax.kernels.slstm.common import Dims  # noqa: E402
from xlstm_flax.kernels.triton import launch  # noqa: E402

STREAMING = (b"slstm_fw_kernel", b"slstm_bw_kernel", b"slstm_dr_kernel")
RESIDENT = (b"slstm_fw_resident_kernel", b"slstm_bw_resident_kernel", b"slstm_dr_kernel")
FOLLOWED = (b"slstm_fw_resident_kernel", b"slstm_bw_fused_kernel")  # dR from programs of the backward's launch


def _shapes(dtype, B, S, NH, DH, gate_dtype=None):
    """Gate inputs (in ``gate_dtype``, default R's), bias and R."""
    sds = jax.ShapeDtypeStruct
    gates = GateInputs(*(sds((B, S, NH, DH), gate_dtype or dtype),) * 4)
    return gates, sds((4, NH, DH), jnp.float32), sds((4, NH, DH, DH), dtype)


def _loss(**tuning):
    kernel = get_slstm_kernel("recurrent--triton")

    def loss(gates, bias, recurrent_kernel):
        h, last = kernel(gates, bias, recurrent_kernel, **tuning)
        return jnp.sum(h) + sum(jnp.sum(s) for s in last)

    return jax.grad(loss, argnums=(0, 1, 2))


SWEEP = [
    # (R dtype, B, S, NH, DH, tuning)
    (jnp.bfloat16, 16, 32, 4, 256, {}),  # the 350m xLSTM[7:1] layer's head dim, defaults (gate inputs in R's dtype)
    (jnp.float32, 4, 16, 2, 64, {}),
    (jnp.float16, 40, 16, 1, 48, dict(block_b=32, block_dh=16, block_k=32, num_warps=8, num_stages=1)),
    (jnp.bfloat16, 8, 16, 2, 16, dict(num_warps=2)),
    (jnp.bfloat16, 64, 16, 2, 128, dict(block_b=64, block_dh=128, block_k=32, num_stages=3)),
    (jnp.float32, 16, 16, 1, 256, dict(block_dh=32, block_k=128, num_warps=8)),
    (jnp.bfloat16, 16, 16, 1, 512, {}),  # the 1.3b xLSTM[7:1] layer's head dim
    (jnp.bfloat16, 16, 16, 4, 256, dict(split=8, block_dh=32, block_k=32)),  # programs meet at group barriers
    (jnp.float32, 24, 16, 2, 48, dict(split=2, block_dh=16, block_k=16, num_warps=2)),
    # R's slice on chip (triton_resident.py): the 350m layer at split 8 (the forward's gate products apart),
    # at its default split 16 (joined) and at split 4; the 1.3b layer's head dim at its default split 16
    (jnp.bfloat16, 16, 16, 4, 256, dict(split=8, resident=True)),
    (jnp.bfloat16, 16, 16, 4, 256, dict(split=16, resident=True)),
    (jnp.bfloat16, 16, 16, 4, 256, dict(split=16, resident=True, follow_dr=True)),  # dR followers
    (jnp.float32, 16, 16, 4, 256, dict(split=16, resident=True)),
    (jnp.bfloat16, 16, 16, 4, 256, dict(split=4, block_dh=64, num_warps=8, resident=True)),
    (jnp.bfloat16, 16, 16, 1, 512, dict(split=16, resident=True)),
    (jnp.float32, 24, 16, 2, 48, dict(split=2, resident=True)),  # padded rows and columns, fp32 (3xTF32)
    (jnp.bfloat16, 24, 16, 2, 48, dict(split=3, block_dh=16, block_k=16, resident=True)),  # split not a power of 2
    # split 5 of 16 columns: parts 3 and 4 only padding (not collected), parts padded to 8
    (jnp.float16, 24, 16, 2, 48, dict(split=5, block_dh=16, block_k=16, resident=True)),
]


def _case_id(case):
    dtype, B, S, NH, DH, tuning = case
    return f"{jnp.dtype(dtype).name}-B{B}-DH{DH}-" + ("defaults" if not tuning else "-".join(map(str, tuning.items())))


@pytest.mark.parametrize("case", SWEEP, ids=_case_id)
def test_forward_and_backward_lower_to_sm90_ptx(monkeypatch, case):
    monkeypatch.setattr(launch, "require_triton_backend", lambda *args: None)  # this machine has no GPU
    dtype, B, S, NH, DH, tuning = case
    backward = triton_launch.resolve_tuning("x", Dims(B, S, NH, DH), recurrent_dtype=dtype, backward=True, **tuning)
    assert backward.resident == tuning.get("resident", backward.resident), "an explicit resident choice was overridden"
    assert backward.follow_dr == tuning.get("follow_dr", False)
    payloads = lowered_triton_calls(_loss(**tuning), *_shapes(dtype, B, S, NH, DH))
    assert_compiled_for_sm90(payloads, FOLLOWED if backward.follow_dr else RESIDENT if backward.resident else STREAMING)
    if backward.follow_dr:
        assert not any(b"slstm_dr_kernel" in p for p in payloads), "dR launched after the walk that computes it"


INVALID = [
    (dict(block_b=8), "block_b=8 must be a power of two in [16, 128]"),
    (dict(block_dh=24), "block_dh=24 must be a power of two in [16, 64]"),
    (dict(block_k=128), "block_k=128 must be a power of two in [16, 64]"),
    (dict(num_warps=3), "num_warps=3"),
    (dict(num_stages=0), "num_stages=0 must be an int in [1, 8]"),
    (dict(split=0), "split=0 must be an int in [1, 32]"),
    (dict(resident=2), "resident=2 must be a bool (or 0 / 1)"),
    (dict(follow_dr=2), "follow_dr=2 must be a bool (or 0 / 1)"),
    (dict(block_dh=16, block_k=16, resident=True), "resident needs one block_dh tile per program, but split=1"),
]


@pytest.mark.parametrize("tuning, message", INVALID, ids=[c[1][:20] for c in INVALID])
def test_invalid_tuning_raises(tuning, message):
    with pytest.raises(ValueError, match=re.escape("recurrent--triton: " + message)):
        jax.eval_shape(_loss(**tuning), *_shapes(jnp.bfloat16, 2, 8, 2, 64))


def test_resident_slice_over_the_budget_raises():
    with pytest.raises(ValueError, match=re.escape("resident R slice (4 x 256 x 128 bfloat16) takes 262144 bytes")):
        jax.eval_shape(_loss(split=2, block_dh=128, resident=True), *_shapes(jnp.bfloat16, 2, 8, 2, 256))


def test_bad_inputs_raise():
    kernel = get_slstm_kernel("recurrent--triton")
    gates, bias, recurrent = _shapes(jnp.float32, 2, 8, 2, 16)
    sds = jax.ShapeDtypeStruct
    with pytest.raises(ValueError, match=re.escape("recurrent_kernel must be (4, 2, 16, 16)")):
        jax.eval_shape(kernel, gates, bias, sds((4, 2, 16, 8), jnp.float32))
    with pytest.raises(ValueError, match=re.escape("gate inputs must be (B, S, NH, DH) arrays of one shape, got z")):
        jax.eval_shape(kernel, gates._replace(z=sds((2, 8, 2, 8), jnp.float32)), bias, recurrent)
    with pytest.raises(ValueError, match="recurrent--triton: gates must be 4 arrays"):
        jax.eval_shape(kernel, gates[:3], bias, recurrent)
    with pytest.raises(ValueError, match="gate inputs must share one float dtype, got o bfloat16"):
        jax.eval_shape(kernel, gates._replace(o=sds((2, 8, 2, 16), jnp.bfloat16)), bias, recurrent)
    with pytest.raises(
        ValueError, match=re.escape("bias must be (4, 2, 16) for gate inputs (2, 8, 2, 16), got (4, 16)")
    ):
        jax.eval_shape(kernel, gates, sds((4, 16), jnp.float32), recurrent)
    with pytest.raises(ValueError, match="recurrent--triton: bias must be float32 .*got bfloat16"):
        jax.eval_shape(kernel, gates, sds(bias.shape, jnp.bfloat16), recurrent)
    with jax.enable_x64(), pytest.raises(ValueError, match="recurrent--triton: bias must be float32, got float64"):
        jax.eval_shape(kernel, gates, sds(bias.shape, jnp.float64), recurrent)
    with jax.enable_x64(), pytest.raises(ValueError, match="recurrent_kernel must be float32, bfloat16 or float16"):
        jax.eval_shape(kernel, gates, bias, sds(recurrent.shape, jnp.float64))
    with jax.enable_x64(), pytest.raises(ValueError, match="gate inputs must be float32, bfloat16 or float16"):
        jax.eval_shape(kernel, GateInputs(*(sds((2, 8, 2, 16), jnp.float64),) * 4), bias, recurrent)


def test_registry_entry_without_gpu_names_the_fallback():
    if launch.gpu_visible():
        pytest.skip("a GPU is visible")
    args = jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), _shapes(jnp.float32, 1, 2, 1, 16))
    with pytest.raises(RuntimeError, match="recurrent--triton needs a CUDA GPU.*recurrent--jax"):
        get_slstm_kernel("recurrent--triton")(*args)


@pytest.mark.parametrize(
    "tuning, names",
    [
        (dict(resident=True, follow_dr=True), FOLLOWED),
        (dict(resident=True), RESIDENT),
        (dict(resident=False), STREAMING),
    ],
    ids=["followed", "resident", "streaming"],
)
def test_bf16_gate_inputs_with_fp32_recurrent_kernel_lower(monkeypatch, tuning, names):
    """The gate inputs' dtype need not be R's: bf16 projections with an fp32 R lower for sm_90, and their
    cotangents (written by the dR kernel or followers) come back in bf16, the bias's and R's in fp32."""
    monkeypatch.setattr(launch, "require_triton_backend", lambda *args: None)
    shapes = _shapes(jnp.float32, 4, 16, 2, 64, gate_dtype=jnp.bfloat16)
    grads = jax.eval_shape(_loss(**tuning), *shapes)
    assert all(g.dtype == jnp.bfloat16 for g in grads[0]) and grads[1].dtype == grads[2].dtype == jnp.float32
    assert_compiled_for_sm90(lowered_triton_calls(_loss(**tuning), *shapes), names)


@pytest.mark.parametrize("tuning", [{}, dict(resident=False)], ids=["resident", "streaming"])
def test_forward_without_gradient_stores_fewer_values(monkeypatch, tuning):
    """Without differentiation the forward kernel skips the gate pre-activations g (only the backward
    reads them): its PTX has fewer global stores than the forward that the gradient runs."""
    monkeypatch.setattr(launch, "require_triton_backend", lambda *args: None)
    kernel = get_slstm_kernel("recurrent--triton")
    shapes = _shapes(jnp.bfloat16, 16, 16, 2, 64)
    alone = lowered_triton_calls(lambda *a: kernel(*a, **tuning), *shapes)
    with_gradient = [p for p in lowered_triton_calls(_loss(**tuning), *shapes) if b"slstm_fw" in p]
    assert len(alone) == len(with_gradient) == 1
    stores = [p.count(b"st.global") for p in (alone[0], with_gradient[0])]
    assert 0 < stores[0] < stores[1], stores
