"""Default tuning of the fused sLSTM kernel (pure function of the shape, the walk and the GPU's SM
count): the split fills but never exceeds the SMs, keeps at least 16 columns per program in both walks,
and is 1 without a GPU; the recurrent kernel's gradient splits its rows until its grid has a program per
SM; programs that follow the backward walk compute it when asked, where the whole grid then fits."""

import math

import jax
import jax.numpy as jnp
import pytest

from xlstm_flax.kernels.slstm import triton_launch
from xlstm_flax.kernels.slstm.common import Dims
from xlstm_flax.kernels.slstm.triton_launch import (
    DEFAULT_MAX_SPLIT,
    default_tuning,
    dr_split_rows,
    follower_programs,
    joins_gate_products,
    resolve_tuning,
    slstm_dr,
)

H200_SMS = 132


def test_350m_layer_shape_on_an_h200():
    tuning = default_tuning(Dims(B=16, S=2048, NH=4, DH=256), H200_SMS)
    assert (tuning.block_b, tuning.split, tuning.block_dh, tuning.block_k) == (16, 16, 16, 16)


@pytest.mark.parametrize(
    "B, DH, split, joined",
    # a gate's (block_b, columns) product in 16 x 8 MMA tiles against the 4 warps: 16 x 32 is 4 tiles, 16 x 16
    # two, 32 x 16 four
    [(16, 256, 8, False), (16, 256, 16, True), (16, 512, 16, False), (32, 256, 16, False), (2, 16, 1, True)],
)
def test_the_forward_joins_its_gate_products_where_one_gate_leaves_warps_idle(B, DH, split, joined):
    tuning = default_tuning(Dims(B=B, S=2048, NH=4, DH=DH), H200_SMS, split=split)
    assert joins_gate_products(tuning, DH) is joined


@pytest.mark.parametrize(
    "B, NH, DH, split",
    # the fastest splits measured: the backward's on the H200 (h200_session14_2026-12-04.md), the forward's
    # with its joined gate products on the H100 at the first four (h100_session34_2026-12-06.md), on the
    # H200 at the last two (session 14)
    [(16, 4, 192, 16), (16, 8, 128, 8), (8, 4, 256, 16), (16, 4, 256, 16), (32, 4, 256, 16), (16, 4, 512, 16)],
)
def test_default_splits_are_the_fastest_measured(B, NH, DH, split):
    assert default_tuning(Dims(B=B, S=2048, NH=NH, DH=DH), H200_SMS).split == split


@pytest.mark.parametrize(
    "B, NH, DH", [(16, 4, 256), (4, 4, 512), (64, 8, 64), (256, 4, 256), (37, 2, 48), (1000, 16, 128)]
)
@pytest.mark.parametrize("sms", [16, 78, 132])
def test_default_split_fits_the_sms_and_keeps_16_columns(B, NH, DH, sms):
    dims = Dims(B=B, S=8, NH=NH, DH=DH)
    tuning = default_tuning(dims, sms)
    programs = math.prod(tuning.grid(dims))
    assert tuning.split == 1 or programs <= sms, f"{tuning} launches {programs} programs on {sms} SMs"
    assert tuning.split == 1 or tuning.columns(DH) >= 16
    doubled = 2 * programs <= sms and tuning.columns(DH) >= 32
    assert tuning.split == DEFAULT_MAX_SPLIT or not doubled, f"{tuning} leaves SMs idle"


def test_without_a_gpu_the_split_is_one_and_given_choices_stay():
    dims = Dims(B=16, S=8, NH=4, DH=256)
    assert default_tuning(dims, None).split == 1
    tuning = default_tuning(dims, H200_SMS, block_b=32, num_warps=8)
    assert (tuning.block_b, tuning.num_warps, tuning.split) == (32, 8, 16)


def test_given_tiles_bound_the_default_split():
    tuning = default_tuning(Dims(B=16, S=8, NH=4, DH=256), H200_SMS, block_dh=128, block_k=32)
    assert tuning.split == 2 and tuning.columns(256) == 128


def test_resident_by_default_where_one_tile_covers_a_program_and_the_slice_fits():
    dims = Dims(B=16, S=8, NH=4, DH=256)

    def resident(**given):
        return resolve_tuning("recurrent--triton", dims, recurrent_dtype=jnp.bfloat16, **given).resident

    assert resident(split=8)  # 4 x 256 x 32 bf16: 64 KiB
    assert resident(split=4, block_dh=64)  # 128 KiB, the budget
    assert not resident(split=2, block_dh=128)  # 256 KiB
    assert not resident(split=8, block_dh=16, block_k=16)  # two tiles per program
    assert not resident(split=8, resident=False)
    # fp32 counts twice (3xTF32): split 8 is 2 x 128 KiB (on the H200 it asked for 272 KiB of shared memory)
    assert not resolve_tuning("recurrent--triton", dims, split=8, recurrent_dtype=jnp.float32).resident
    assert resolve_tuning("recurrent--triton", dims, split=16, recurrent_dtype=jnp.float32).resident


@pytest.mark.parametrize(
    "B, DH, runs",
    # 350m sLSTM: 4 heads x (16 walk programs + 16 followers) = 128 of 132; B = 32: the same grid; DH 192
    # (125m): 4 of the 16 walk programs own only padding; 1.3b (DH 512): 4 x (16 + 64); B = 128: two batch
    # blocks, 2 x 4 x (8 + 16) = 192
    [(16, 256, True), (32, 256, True), (16, 192, False), (16, 512, False), (128, 256, False)],
)
def test_dr_followers_run_when_asked_where_the_grid_fits_the_sms(monkeypatch, B, DH, runs):
    monkeypatch.setattr(triton_launch, "_gpu_sms", lambda: H200_SMS)
    dims = Dims(B=B, S=2048, NH=4, DH=DH)
    assert not resolve_tuning("recurrent--triton", dims, backward=True).follow_dr  # off by default
    assert not resolve_tuning("recurrent--triton", dims, follow_dr=True).follow_dr  # the forward ignores it
    if not runs:
        with pytest.raises(ValueError, match="follow_dr"):
            resolve_tuning("recurrent--triton", dims, backward=True, follow_dr=True)
        return
    backward = resolve_tuning("recurrent--triton", dims, backward=True, follow_dr=True)
    walk, _, _ = backward.grid(dims)
    assert backward.resident and backward.follow_dr and walk == backward.split + follower_programs(DH)
    assert math.prod(backward.grid(dims)) <= H200_SMS


def test_follow_dr_is_refused_by_name_where_it_cannot_run(monkeypatch):
    dims = Dims(B=16, S=8, NH=4, DH=256)
    with pytest.raises(ValueError, match="bw: follow_dr needs resident"):
        resolve_tuning("bw", dims, backward=True, resident=False, follow_dr=True)
    with pytest.raises(ValueError, match="bw: follow_dr='yes' must be a bool"):
        resolve_tuning("bw", dims, backward=True, follow_dr="yes")
    with pytest.raises(ValueError, match="bw: follow_dr needs every walk program to own columns, but split=16 x 16"):
        resolve_tuning("bw", Dims(B=16, S=8, NH=4, DH=192), backward=True, split=16, follow_dr=True)
    monkeypatch.setattr(triton_launch, "_gpu_sms", lambda: H200_SMS)
    with pytest.raises(ValueError, match=r"bw: split=16 \+ 64 dR followers launches 320 programs .* 132 SMs"):
        resolve_tuning("bw", Dims(B=16, S=8, NH=4, DH=512), backward=True, follow_dr=True)


@pytest.mark.parametrize("B, S, NH, DH", [(16, 2048, 4, 256), (8, 4096, 1, 512), (2, 64, 2, 48), (64, 128, 16, 128)])
@pytest.mark.parametrize("sms", [16, 78, 132])
def test_gradient_rows_split_until_the_grid_fills_the_sms(B, S, NH, DH, sms):
    dims = Dims(B=B, S=S, NH=NH, DH=DH)
    tiles = math.ceil(DH / 128) ** 2 * 4 * NH
    blocks = B * math.ceil(S / 64)
    split = dr_split_rows(dims, 128, 64, sms)
    assert split & (split - 1) == 0 and 1 <= split <= blocks
    assert tiles * split >= sms or 2 * split > blocks, f"{tiles} x {split} programs leave SMs idle"
    assert split == 1 or tiles * split // 2 < sms, f"split {split} is larger than needed"
    assert dr_split_rows(dims, 128, 64, None) == 1


def test_gradient_rows_of_the_350m_layer_on_an_h200():
    assert dr_split_rows(Dims(B=16, S=2048, NH=4, DH=256), 128, 64, H200_SMS) == 4  # 256 programs


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(block=48), "block=48 must be a power of two in"),
        (dict(block_n=8), "block_n=8 must be a power of two in"),
        (dict(num_warps=3), "num_warps=3 must be a power of two in"),
        (dict(num_stages=0), "num_stages=0 must be an int in"),
        (dict(split_rows=0), "split_rows=0 must be an int in"),
    ],
)
def test_bad_gradient_tuning_is_refused_by_name_before_any_work(bad, message):
    B, S, NH, DH = 2, 8, 1, 16
    ks = jax.random.split(jax.random.key(0), 3)
    h_history = jax.random.normal(ks[0], (B, S + 1, NH, DH))
    dg = jax.random.normal(ks[1], (B, S, 4, NH, DH))
    recurrent = jax.random.normal(ks[2], (4, NH, DH, DH)).astype(jnp.bfloat16)
    with pytest.raises(ValueError, match=f"slstm_dr: {message}"):
        slstm_dr(h_history, dg, recurrent, Dims(B, S, NH, DH), **bad)


@pytest.mark.parametrize(
    "given, forward, backward",
    [
        ({}, (16, False), (16, False)),
        (dict(follow_dr=True), (16, False), (16, True)),
        (dict(split=4), (4, False), (4, False)),
    ],
    ids=["defaults", "follow-dr", "split"],
)
def test_each_walk_runs_with_its_own_tuning(monkeypatch, given, forward, backward):
    """The registry kernel hands the forward walk the forward's tuning and the backward walk the
    backward's, (split, follow_dr) (as on an H200: patched SM count, traced only); what the user gives
    holds for both walks, follow_dr for the backward only."""
    from xlstm_flax.kernels.slstm import GateInputs, get_slstm_kernel
    from xlstm_flax.kernels.triton import launch

    monkeypatch.setattr(triton_launch, "_gpu_sms", lambda: H200_SMS)
    monkeypatch.setattr(launch, "require_triton_backend", lambda *args: None)
    seen = {}
    for walk in ("slstm_fw", "slstm_bw"):
        launcher = getattr(triton_launch, walk)

        def recording(*args, launcher=launcher, walk=walk, **kwargs):
            tuning = next(a for a in args if isinstance(a, triton_launch.Tuning))
            seen[walk] = (tuning.split, tuning.follow_dr)
            return launcher(*args, **kwargs)

        monkeypatch.setattr(triton_launch, walk, recording)
    kernel = get_slstm_kernel("recurrent--triton")
    B, S, NH, DH = 16, 8, 4, 256
    gates = GateInputs(*(jax.ShapeDtypeStruct((B, S, NH, DH), jnp.bfloat16),) * 4)
    bias = jax.ShapeDtypeStruct((4, NH, DH), jnp.float32)
    r = jax.ShapeDtypeStruct((4, NH, DH, DH), jnp.bfloat16)
    loss = lambda g, b, rr: jnp.sum(kernel(g, b, rr, **given)[0])  # noqa: E731
    jax.eval_shape(jax.grad(loss, argnums=(0, 1, 2)), gates, bias, r)
    assert seen == {"slstm_fw": forward, "slstm_bw": backward}
