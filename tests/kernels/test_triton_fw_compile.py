"""The Triton forward lowers for CUDA on the CPU machine (jax-triton down to PTX for sm_90a), and bad
tuning arguments raise ValueError naming the rule (a tiling that needs more shared memory than sm_90 has,
when lowered). No GPU needed (docs/testing.md).

The sweep covers rather than multiplies: every chunk size 16..256 (inter < intra included), block
sizes from 16 up to the padded head dim, warps 2..8, stages 1..4, fp32/bf16/fp16 and head dims 16, 48,
64, 96, 128, 256, 512 each appear at least once. About a minute on 2 CPU cores with an empty Triton
cache (Triton caches compiled kernels, so reruns are faster). The materialised output stage
(``materialise_scores``: scores + output kernels) lowers at the 7B (256 x 512) and 128 x 256 head dims,
with and without document resets.
"""

import functools
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.kernels.lowering import assert_compiled_for_sm90, lowered_triton_calls, skip_module_unless_lowerable

skip_module_unless_lowerable()

from xlstm_flax.kernels import common  # noqa: E402
from xlstm_flax.kernels.triton import mlstm_chunkwise_fw  # noqa: E402
from xlstm_flax.kernels.triton.tuning import resolve_bw_config, resolve_fw_config  # noqa: E402

KERNEL_NAMES = (b"recurrent_fw_kernel", b"parallel_fw_kernel")


def _shapes(dtype, B, NH, S, DHQK, DHV):
    qk = jax.ShapeDtypeStruct((B, NH, S, DHQK), dtype)
    gates = jax.ShapeDtypeStruct((B, NH, S), jnp.float32)
    return qk, qk, jax.ShapeDtypeStruct((B, NH, S, DHV), dtype), gates, gates


def _forward(**tuning):
    def fw(q, k, v, i, f):
        h, den, m, last, _ = mlstm_chunkwise_fw(q, k, v, i, f, return_last_states=True, **tuning)
        return h, den, m, last

    return fw


SWEEP = [
    # (dtype, S, DHQK, DHV, tuning)
    (jnp.bfloat16, 128, 64, 64, {}),  # all defaults
    (jnp.float32, 64, 16, 16, {}),
    (jnp.float16, 128, 48, 96, {}),
    # the tuned bf16 defaults of the xLSTM-7B head dims (chunk 256): 64-row scores blocks, smaller than the
    # output kernel's 128 rows (the scores kernel writes zero blocks for it)
    (jnp.bfloat16, 2048, 256, 512, {}),  # one sequence of 2 heads: 64-row state tiles
    (jnp.bfloat16, 2048, 256, 512, dict(materialise_scores=False)),  # the parallel kernel at those dims
    # 128-row, 8-warp, 3-stage scores blocks at those dims (equal to the output kernel's rows)
    (jnp.bfloat16, 2048, 256, 512, dict(siz_b_L_parallel=128, num_warps_intra=8, num_stages_intra=3)),
    (jnp.float32, 2048, 256, 512, {}),  # fp32 defaults (smaller parallel tiles, chunk 256)
    (jnp.float16, 512, 128, 256, {}),
    (jnp.bfloat16, 128, 512, 512, {}),
    (
        jnp.bfloat16,
        64,
        96,
        48,
        dict(
            chunk_size_inter=16,
            chunk_size_intra=64,
            siz_b_L_parallel=16,
            siz_b_L_loop=16,
            siz_b_DH_parallel=16,
            siz_b_DH_loop=16,
        ),
    ),
    (
        jnp.bfloat16,
        256,
        128,
        128,
        dict(
            chunk_size_inter=256,
            chunk_size_intra=256,
            siz_b_L_parallel=128,
            siz_b_L_loop=64,
            siz_b_DH_parallel=128,
            siz_b_DH_loop=128,
            num_warps_intra=8,
            num_stages_intra=3,
            num_warps_inter=8,
            num_stages_inter=4,
        ),
    ),
    (
        jnp.float16,
        128,
        128,
        256,
        dict(
            chunk_size_inter=32,
            chunk_size_intra=128,
            num_warps_intra=2,
            num_stages_intra=1,
            num_warps_inter=2,
            num_stages_inter=1,
        ),
    ),
    (
        jnp.float32,
        128,
        128,
        128,
        dict(
            chunk_size_inter=64,
            chunk_size_intra=128,
            siz_b_L_parallel=32,
            siz_b_L_loop=32,
            siz_b_DH_parallel=32,
            siz_b_DH_loop=32,
        ),
    ),
    (jnp.bfloat16, 32, 16, 16, dict(chunk_size_inter=16, chunk_size_intra=16)),
    (
        jnp.bfloat16,
        256,
        64,
        64,
        dict(
            chunk_size_inter=128,
            chunk_size_intra=256,
            siz_b_L_parallel=64,
            siz_b_L_loop=128,
            siz_b_DH_parallel=64,
            siz_b_DH_loop=64,
        ),
    ),
]


def _case_id(case):
    dtype, S, DHQK, DHV, tuning = case
    return f"{jnp.dtype(dtype).name}-S{S}-{DHQK}x{DHV}-" + ("defaults" if not tuning else str(len(tuning)) + "opts")


@pytest.mark.parametrize("case", SWEEP, ids=_case_id)
def test_forward_lowers_to_sm90_ptx(case):
    dtype, S, DHQK, DHV, tuning = case
    payloads = lowered_triton_calls(_forward(**tuning), *_shapes(dtype, 1, 2, S, DHQK, DHV))
    dims = common.Dims(1, 2, S, DHQK, DHV)
    materialised = resolve_fw_config(dims, dtype, **tuning).materialise_scores
    assert_compiled_for_sm90(payloads, SCORES_KERNEL_NAMES if materialised else KERNEL_NAMES)


def test_16bit_defaults_materialise_scores_only_with_several_dhv_tiles():
    """The output stage by default: scores + output kernels where DHV spans several 256-column tiles
    (16-bit inputs), the parallel kernel otherwise (H200 timings in kernels/triton/tuning.py)."""
    cases = {(256, 512, jnp.bfloat16): True, (64, 512, jnp.float16): True, (128, 256, jnp.bfloat16): False}
    cases |= {(256, 512, jnp.float32): False, (48, 96, jnp.bfloat16): False}
    for (DHQK, DHV, dtype), expected in cases.items():
        config = resolve_fw_config(common.Dims(1, 2, 2048, DHQK, DHV), dtype)
        assert config.materialise_scores is expected, (DHQK, DHV, dtype)
        if expected and DHQK <= 256:
            assert config.siz_b_DH_loop == DHQK  # one q k^T dot per key block


@pytest.mark.parametrize(
    "B, NH, dtype, DHQK, rows",
    [
        (1, 8, jnp.bfloat16, 256, 64),  # one 7B-shaped sequence: 128-row tiles would leave SMs idle
        (2, 8, jnp.bfloat16, 256, 64),
        (4, 8, jnp.bfloat16, 256, 128),  # 32 (batch, head) pairs: two 128-row programs per SM
        (8, 16, jnp.float16, 128, 128),
        (8, 8, jnp.float32, 256, 64),  # fp32: 64 rows at any grid
        (8, 8, jnp.bfloat16, 64, 64),  # head dim below 128
    ],
)
def test_state_walk_tiles_follow_the_number_of_batch_heads(B, NH, dtype, DHQK, rows):
    """Both state walks (forward C, backward dC) take 64-row tiles for at most 16 (batch, head) pairs
    (kernels/triton/tuning.py, state_tile_rows: H200 timings there)."""
    dims = common.Dims(B, NH, 8192, DHQK, 2 * DHQK)
    assert resolve_fw_config(dims, dtype).siz_b_DHQK_inter == rows
    assert resolve_bw_config(dims, dtype).block_dhqk_recurrent == rows


INVALID = [
    # (S, DHQK, tuning, message the ValueError must contain)
    (96, 64, dict(chunk_size_intra=48), "chunk_size_intra=48 must be a power of two"),
    (64, 64, dict(chunk_size_intra=8), "chunk_size_intra=8 must be a power of two in [16"),
    (64, 64, dict(chunk_size_inter=64, chunk_size_intra=32), "chunk_size_inter=64 must be <= chunk_size_intra=32"),
    (96, 64, dict(chunk_size_intra=64), "S=96 must be a multiple of chunk_size_intra=64"),
    (
        1000,
        64,
        {},
        "S=1000: S must be a multiple of 16 for mlstm_chunkwise_fw; the registry entry 'chunkwise--triton' pads any S",
    ),
    (64, 64, dict(chunk_size_intra=32, siz_b_L_parallel=64), "siz_b_L_parallel=64"),
    (64, 64, dict(siz_b_L_loop=8), "siz_b_L_loop=8"),
    (64, 48, dict(siz_b_DH_loop=128), "siz_b_DH_loop=128"),
    (64, 64, dict(siz_b_DH_parallel=24), "siz_b_DH_parallel=24"),
    (64, 64, dict(num_warps_intra=3), "num_warps_intra=3"),
    (64, 64, dict(num_stages_inter=0), "num_stages_inter=0"),
    (64, 64, dict(siz_b_L_output=24), "siz_b_L_output=24 must be a power of two in [16, 64]"),
    (64, 64, dict(siz_b_K_output=128), "siz_b_K_output=128 must be a power of two in [16, 64]"),
    (64, 64, dict(materialise_scores=1), "materialise_scores must be True or False, got 1"),
    (64, 64, dict(num_warps_output=3), "num_warps_output=3"),
    (64, 64, dict(num_stages_output=9), "num_stages_output=9"),
    (64, 64, dict(output_dtype=jnp.int32), "output_dtype"),
]


@pytest.mark.parametrize("S, DHQK, tuning, message", INVALID, ids=[c[3][:28] for c in INVALID])
def test_invalid_arguments_raise(S, DHQK, tuning, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        jax.eval_shape(_forward(**tuning), *_shapes(jnp.bfloat16, 1, 2, S, DHQK, 64))


def test_mismatched_shapes_and_dtypes_raise():
    q, k, v, i, f = _shapes(jnp.bfloat16, 1, 2, 64, 64, 64)
    with pytest.raises(ValueError, match="k has shape"):
        jax.eval_shape(_forward(), q, jax.ShapeDtypeStruct((1, 2, 64, 32), jnp.bfloat16), v, i, f)
    with pytest.raises(ValueError, match="i has shape"):
        jax.eval_shape(_forward(), q, k, v, jax.ShapeDtypeStruct((1, 2, 32), jnp.float32), f)
    with jax.enable_x64():
        q64, k64, v64, i64, f64 = _shapes(jnp.float64, 1, 2, 64, 64, 64)
        with pytest.raises(ValueError, match="supports q/k/v in float32, bfloat16, float16; got float64"):
            jax.eval_shape(_forward(), q64, k64, v64, i64, f64)


def test_registry_entry_without_gpu_names_the_fallback():
    from xlstm_flax.kernels import get_kernel
    from xlstm_flax.kernels.triton import launch

    if launch.gpu_visible():
        pytest.skip("a GPU is visible")
    q, k, v, i, f = (jnp.ones(s.shape, s.dtype) for s in _shapes(jnp.float32, 1, 1, 16, 16, 16))
    with pytest.raises(RuntimeError, match="needs a CUDA GPU.*chunkwise--jax"):
        get_kernel("chunkwise--triton")(q, k, v, i, f)


def test_registry_entry_rejects_bad_options():
    from xlstm_flax.kernels.triton.autograd import mlstm_chunkwise_triton

    args = _shapes(jnp.float32, 1, 1, 40, 16, 16)
    bad = [
        (dict(chunk_size=48), "chunk_size=48 must be a power of two"),
        (dict(chunk_size=32, chunk_size_intra=64), "chunk_size=32 and chunk_size_intra=64 disagree"),
        (dict(siz_b_LQ=16), "unknown tuning option(s) ['siz_b_LQ']"),
    ]
    for options, message in bad:
        with pytest.raises(ValueError, match=re.escape(message)):
            jax.eval_shape(functools.partial(mlstm_chunkwise_triton, **options), *args)


SCORES_KERNEL_NAMES = (b"recurrent_fw_kernel", b"scores_fw_kernel", b"output_fw_kernel")
ON = dict(materialise_scores=True)
SCORES_SWEEP = [
    # (dtype, S, DHQK, DHV, tuning): chunk 256 from S = 2048 on
    (jnp.bfloat16, 2048, 256, 512, ON),  # defaults: 128-row scores, one dot over DHQK, 128 x 256 output
    (jnp.bfloat16, 2048, 256, 512, dict(ON, siz_b_DH_loop=64)),  # q k^T over 64-wide DHQK blocks
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


@pytest.mark.parametrize("case", SCORES_SWEEP, ids=_case_id)
def test_materialised_forward_lowers_to_sm90_ptx(case):
    dtype, S, DHQK, DHV, tuning = case
    payloads = lowered_triton_calls(_forward(**tuning), *_shapes(dtype, 1, 2, S, DHQK, DHV))
    assert_compiled_for_sm90(payloads, SCORES_KERNEL_NAMES)
    assert len(payloads) == 3 and not any(b"parallel_fw_kernel" in p for p in payloads)


def test_materialised_segments_forward_and_backward_lower(monkeypatch):
    """With ``segment_ids`` the scores kernel's segment variant runs (the output kernel has none: resets
    are in P and the inter weights); the backward launches as without the option (its own scores kernel
    included, the bf16 default)."""
    from xlstm_flax.kernels import get_kernel
    from xlstm_flax.kernels.triton import autograd

    monkeypatch.setattr(autograd, "_require_triton_backend", lambda: None)
    S = 512
    ids = np.repeat(np.arange(4, dtype=np.int32), S // 4)[None]
    kernel = get_kernel("chunkwise--triton")

    def loss(q, k, v, i, f):
        h, last = kernel(q, k, v, i, f, return_last_states=True, segment_ids=ids, materialise_scores=True)
        return jnp.sum(h.astype(jnp.float32)) + sum(jnp.sum(x) for x in last)

    payloads = lowered_triton_calls(jax.grad(loss, argnums=(0, 1, 2, 3, 4)), *_shapes(jnp.bfloat16, 1, 2, S, 128, 256))
    assert_compiled_for_sm90(
        payloads, (b"scores_fw_segments_kernel", b"output_fw_kernel", b"scores_bw_segments_kernel")
    )
    assert len(payloads) == 9, "2 states, scores, output, dC, backward scores (bf16 default), dq, dk, dv"
    assert not any(b"parallel_fw" in p for p in payloads)


def test_large_grid_defaults_lower_with_128_row_state_tiles(monkeypatch):
    """From 17 (batch, head) pairs on, both state walks take 128-row tiles at the 7B head dims (the sweep
    above lowers 2 heads, hence 64 rows): the registry entry's forward and backward lower for sm_90."""
    from xlstm_flax.kernels import get_kernel
    from xlstm_flax.kernels.triton import autograd

    monkeypatch.setattr(autograd, "_require_triton_backend", lambda: None)
    args = _shapes(jnp.bfloat16, 2, 9, 512, 256, 512)
    assert resolve_fw_config(common.Dims(2, 9, 512, 256, 512), jnp.bfloat16).siz_b_DHQK_inter == 128
    kernel = get_kernel("chunkwise--triton")
    payloads = lowered_triton_calls(jax.grad(lambda *x: jnp.sum(kernel(*x).astype(jnp.float32)), (0, 1, 2)), *args)
    assert_compiled_for_sm90(payloads, (b"recurrent_bw_kernel",))
    states = [p for p in payloads if b"recurrent_fw_kernel" in p]  # the forward's walk and the backward's
    assert states and all(b".target sm_90a" in p and b"mma" in p for p in states)


OVERFLOWING = dict(siz_b_L_parallel=128, siz_b_L_loop=128, num_warps_intra=8, num_stages_intra=3)


def test_tuning_that_overflows_shared_memory_fails_at_lowering(tmp_path, monkeypatch):
    """128-row, 3-stage scores blocks with 128-step key blocks at the 7B head dims need 288 KiB, more than
    sm_90's 227 KiB per block: a ValueError naming the kernel and the bytes when the function is lowered,
    before any launch; again when the compilation comes from the disk cache (the second lowering rewrites no entry)."""
    monkeypatch.setenv("XLSTM_FLAX_TRITON_CACHE", str(tmp_path))
    args = _shapes(jnp.bfloat16, 1, 1, 2048, 256, 512)
    message = r"scores_fw_kernel needs \d+ bytes of shared memory .* sm_90 allows 232448 per block"
    with pytest.raises(ValueError, match=message):
        lowered_triton_calls(_forward(**OVERFLOWING), *args)
    stored = {entry: entry.stat().st_mtime_ns for entry in tmp_path.glob("*.json")}
    names = {json.loads(entry.read_text())["name"] for entry in stored}
    assert "scores_fw_kernel" in names, f"the cache holds {sorted(names)}: the check ran before it stored"
    with pytest.raises(ValueError, match=message):
        lowered_triton_calls(_forward(**OVERFLOWING), *args)
    assert {entry: entry.stat().st_mtime_ns for entry in tmp_path.glob("*.json")} == stored
