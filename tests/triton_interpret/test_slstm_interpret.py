"""The fused sLSTM Triton kernels in Triton's interpreter vs the float64 reference (tests/kernels/slstm_checks.py).

Run in their own process: ``TRITON_INTERPRET=1 .venv/bin/python -m pytest -q -p no:cacheprovider
tests/triton_interpret``. Shapes stay tiny: the interpreter runs every program step by step in Python.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import triton
import triton.language as tl
from flax import nnx

from tests.kernels.compare import assert_close
from tests.kernels.slstm_checks import (
    BIAS,
    RECURRENT,
    case_id,
    check_against_reference,
    check_dr_followers,
    check_triton_case,
    make_inputs,
    random_cotangents,
)
from tests.model.helpers import perturb_params
from xlstm_flax.kernels.slstm import get_slstm_kernel, triton_launch
from xlstm_flax.kernels.slstm.common import Dims, GateInputs, States
from xlstm_flax.kernels.slstm.triton_resident import _collect, _post, _tag_field, _tag_mismatch, _walk_program
from xlstm_flax.kernels.triton import launch
from xlstm_flax.layers import sLSTMLayer, sLSTMLayerConfig

# fp32: the interpreter's fp32 dots are exact; measured errors about 1e-7 (values) to 7e-7 (gradients),
# 10x margin. bf16 R: h and dg are rounded to bf16 before each product (measured up to 5e-3); fp16 R:
# rounded to fp16 (measured up to 5.1e-4).
TOL = {jnp.float32: (2e-6, 5e-6), jnp.bfloat16: (1e-2, 2e-2), jnp.float16: (5e-3, 5e-3)}

CASES = [
    # (R dtype, B, S, NH, DH, initial states, tuning); R resident (triton_resident.py) by default where
    # one tile covers the head (split 1 here) and its slice fits; dR from a kernel after the backward walk,
    # or with follow_dr from programs that follow it (after the walk here too, since the interpreter runs
    # one program at a time)
    (jnp.float32, 2, 7, 2, 16, True, {}),  # one tile, B < block_b: resident, dR from a kernel of its own
    (jnp.float32, 2, 7, 2, 16, True, dict(follow_dr=True)),  # resident, dR followers
    (jnp.float32, 3, 70, 1, 16, True, dict(follow_dr=True)),  # two 64-step blocks of dR followers, the first short
    (jnp.float32, 2, 7, 2, 16, True, dict(resident=False)),  # the same, streaming R
    (jnp.float32, 3, 5, 1, 40, True, dict(block_dh=16, block_k=32)),  # DH not a power of two, several tiles
    (jnp.float32, 3, 5, 1, 40, True, dict(resident=True)),  # resident, padded columns and rows
    (jnp.float32, 17, 4, 1, 16, False, dict(block_b=16)),  # two batch blocks, default initial states
    (jnp.bfloat16, 2, 6, 2, 32, True, dict(block_dh=16, block_k=16)),
    (jnp.bfloat16, 2, 6, 2, 32, True, dict(resident=True)),
    (jnp.bfloat16, 2, 6, 2, 16, True, dict(resident=True)),  # 16 columns: the forward's gates in one product
    (jnp.float16, 2, 6, 2, 32, True, dict(resident=True)),  # 16-bit exchange words, fp32-operand dR
]


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_triton_slstm_matches_reference(case):
    check_triton_case(case, TOL)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["fp32", "bf16"])
def test_dr_followers_match_the_dr_kernel_after_the_walk(dtype):
    """Two batch blocks (B = 17, block_b 16), S = 70 (a short 64-step block first), DH = 40 (padded): dR from
    the programs that follow the backward walk within 2e-6 of the dR kernel's after it (the interpreter's
    dots are exact fp32, only the order of the sums differs; bf16 R splits dg into the same two parts in
    both), every other output identical. The interpreter runs the walk before its followers, so this checks
    their indexing, not their waiting (GPU tests)."""
    check_dr_followers(27, Dims(17, 70, 1, 40), dtype, 2e-6, block_b=16)


def test_ties_of_the_stabiliser_split_its_gradient_like_jnp_maximum():
    """At step 0 logsigmoid(f) + m0 == i exactly (f = 100: logsigmoid(f) is below half an ulp of m0, in
    fp32 and in float64; h0 = 0 and the i and f biases 0, so those gates are the gate inputs exactly): the
    max splits the cotangent of m in half, as autodiff of jnp.maximum does. A kernel sending it all to one
    side fails on d gate_i and dm0."""
    args = make_inputs(21, 2, 3, 1, 16)
    gate_i, gate_f, _, _, bias, _, c0, _, m0, _ = args
    args[0], args[1] = gate_i.at[:, 0].set(m0), gate_f.at[:, 0].set(100.0)
    args[BIAS] = bias.at[:2].set(0.0)
    args[-1] = jnp.zeros_like(c0)
    assert bool(jnp.all(jax.nn.log_sigmoid(args[1][:, 0]) + m0 == args[0][:, 0])), "no tie in the test data"
    check_against_reference(get_slstm_kernel("recurrent--triton"), args, random_cotangents(22, args[0]), 2e-6, 5e-6)


def test_bf16_gate_inputs_get_bf16_cotangents():
    """bf16 gate inputs (the bf16 layer's projections) with an fp32 R: the values within fp32 error of the
    float64 reference, the gate inputs' cotangents bf16 and within their rounding (bf16's unit roundoff
    2^-8 = 3.9e-3 of an element; measured 3.0e-3): 4e-3; every other gradient within fp32 error."""
    args = make_inputs(25, 2, 6, 2, 32, gate_dtype=jnp.bfloat16)
    kernel = get_slstm_kernel("recurrent--triton")
    cotangents = random_cotangents(26, args[0])
    grads = jax.grad(
        lambda *g: jnp.sum(kernel(GateInputs(*g), *args[BIAS : RECURRENT + 1])[0] * cotangents[0]), argnums=(0, 1, 2, 3)
    )(*args[:4])
    assert all(g.dtype == jnp.bfloat16 for g in grads)
    check_against_reference(kernel, args, cotangents, 2e-6, 5e-6, tol_gate_grads=4e-3)


@pytest.mark.parametrize("resident", [True, False], ids=["resident", "streaming"])
def test_forward_without_gates_gives_the_same_states(resident):
    """``store_gates=False`` (the forward without differentiation) returns no g and the very same state
    histories, h included, as the forward the backward uses."""
    args = make_inputs(31, 2, 5, 2, 16)
    gates, bias, recurrent, initial = GateInputs(*args[:4]), args[BIAS], args[RECURRENT], States(*args[RECURRENT + 1 :])
    dims = Dims(2, 5, 2, 16)
    tuning = triton_launch.resolve_tuning("test", dims, resident=resident)
    g, stored = triton_launch.slstm_fw(gates, bias, recurrent, initial, dims, tuning)
    none, alone = triton_launch.slstm_fw(gates, bias, recurrent, initial, dims, tuning, store_gates=False)
    assert none is None and g.shape == (2, 5, 4, 2, 16) and bool(jnp.all(jnp.isfinite(g)))
    for name, want, got in zip(States._fields, stored, alone):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=name)


def _layer(kernel: str):
    config = sLSTMLayerConfig(num_heads=2, conv_kernel_size=3, kernel=kernel)
    return perturb_params(sLSTMLayer(32, config, num_blocks=1, rngs=nnx.Rngs(0)), 1)


def _outputs_and_gradients(kernel: str, x, weights):
    """The layer's output and last state from a state after two tokens, and the gradients of a
    linear loss on them w.r.t. every parameter."""
    layer = _layer(kernel)
    _, state = layer(x[:, :2], return_state=True)

    def loss(layer):
        y, last = layer(x, state, return_state=True)
        return jnp.sum(y * weights) + jnp.sum(last.c) + jnp.sum(last.h), (y, last)

    (_, outputs), grads = nnx.value_and_grad(loss, has_aux=True)(layer)
    return outputs, nnx.to_pure_dict(grads)


def test_layer_with_triton_kernel_equals_scan_layer():
    """Same parameters, input and a non-trivial initial state: the output, the last state and the
    gradients of every parameter agree with the scan layer to fp32 summation-order error (5e-6)."""
    x = jax.random.normal(jax.random.key(3), (2, 5, 32), jnp.float32)
    weights = jax.random.normal(jax.random.key(4), (2, 5, 32), jnp.float32)
    (y_ref, last_ref), grads_ref = _outputs_and_gradients("recurrent--jax", x, weights)
    (y, last), grads = _outputs_and_gradients("recurrent--triton", x, weights)
    assert_close(y, y_ref, 5e-6, "y")
    for name in ("c", "n", "m", "h"):
        assert_close(getattr(last, name), getattr(last_ref, name), 5e-6, f"last {name}")
    flat, flat_ref = jax.tree.leaves_with_path(grads), jax.tree.leaves(grads_ref)
    assert len(flat) == len(flat_ref) >= 8
    for (path, g), g_ref in zip(flat, flat_ref):
        assert_close(g, g_ref, 5e-6, f"grad {jax.tree_util.keystr(path)}")


# bf16 R: dg is split into two bf16 parts, leaving about 2^-17 of each element (measured 2.8e-6);
# fp32 and fp16 R: the interpreter's 3xTF32 dots are exact fp32 (measured 1.2e-7 and 1.1e-7). Dropping
# the low part of dg gives 1.8e-3.
DR_TOL = {jnp.bfloat16: 3e-5, jnp.float32: 2e-6, jnp.float16: 2e-6}


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32, jnp.float16], ids=["bf16", "fp32", "fp16"])
def test_recurrent_kernel_gradient_in_parts_matches_float64(dtype):
    """slstm_dr against a float64 sum over (b, t) of h_{t-1}^T dg_t[gate] with h rounded to R's dtype:
    the rows in 3 parts (each summed by programs of its own, the middle one across the two sequences),
    S = 37 not a multiple of the 16-step blocks, DH = 40 in 32-column tiles (the second padded). dg passed
    on per gate in the gate inputs' dtype (here R's) equals dg rounded to it."""
    B, S, NH, DH = 2, 37, 2, 40
    ks = jax.random.split(jax.random.key(41), 3)
    h_history = jax.random.normal(ks[0], (B, S + 1, NH, DH), jnp.float32)
    dg = jax.random.normal(ks[1], (B, S, 4, NH, DH), jnp.float32)
    recurrent = jax.random.normal(ks[2], (4, NH, DH, DH), jnp.float32).astype(dtype)
    dims = Dims(B, S, NH, DH)
    got, d_gates = triton_launch.slstm_dr(h_history, dg, recurrent, dims, dtype, block=32, block_n=16, split_rows=3)
    h = np.asarray(h_history[:, :S].astype(dtype).astype(jnp.float32), np.float64)
    want = np.einsum("btnd,btgne->gnde", h, np.asarray(dg, np.float64))
    assert got.shape == recurrent.shape and got.dtype == jnp.float32
    assert_close(got, want, DR_TOL[dtype], "dR")
    assert all(d.dtype == dtype for d in d_gates)
    np.testing.assert_array_equal(np.stack(d_gates, axis=2), np.asarray(dg.astype(dtype)))


@triton.jit
def _post_kernel(values, tags, ring_in, arrived, stale_arrived, N: tl.constexpr, WORD_BITS: tl.constexpr):
    """Posts ``values`` (one tag per element) into ``ring`` (words of WORD_BITS) and, for int32 words,
    reads them back: whether each has arrived for its own tag and for the tag two steps on (a waiter for
    that one must not take it)."""
    offs = tl.arange(0, N)
    value = tl.load(values + offs)
    tag = tl.load(tags + offs)
    if WORD_BITS == 64:
        _post(ring_in.to(tl.pointer_type(tl.int64), bitcast=True), offs, offs < N, value, tag)
    else:
        _post(ring_in, offs, offs < N, value, tag)
        word = tl.load(ring_in + offs)
        bits: tl.constexpr = value.dtype.primitive_bitwidth
        tl.store(arrived + offs, ((_tag_mismatch(word, tag, bits) & _tag_field(bits)) == 0).to(tl.int32))
        tl.store(stale_arrived + offs, ((_tag_mismatch(word, tag + 2, bits) & _tag_field(bits)) == 0).to(tl.int32))


@triton.jit
def _collect_kernel(ring_in, tags, collected, N: tl.constexpr, WORD_BITS: tl.constexpr):
    """The values :func:`_collect` takes from ``ring_in``: for each int32 word at its own tag, for
    int64 words at the first tag (the wait compares the words' minimum tag with one tag)."""
    offs = tl.arange(0, N)
    if WORD_BITS == 64:  # one tag, as in the kernels
        ring = ring_in.to(tl.pointer_type(tl.int64), bitcast=True)
        tag = tl.load(tags)
    else:
        ring = ring_in
        tag = tl.load(tags + offs)
    tl.store(collected + offs, _collect(ring, offs, offs < N, tag, collected.dtype.element_ty))


@pytest.mark.parametrize(
    "dtype, word_bits",
    [(jnp.bfloat16, 32), (jnp.float16, 32), (jnp.float32, 32), (jnp.float32, 64)],
    ids=["bf16", "fp16", "fp32-int32", "fp32-int64"],
)
def test_exchange_words_keep_value_and_tag_across_the_tag_wrap(dtype, word_bits):
    """A posted int32 word counts as arrived for its own tag and not for the tag two steps on, at tags
    around 2^8, 2^15 and 2^16 where the 8- and 16-bit tag fields wrap and int32 shifts carry the sign;
    every value (negative ones included: their sign bits must not reach the tag) comes back, exactly
    for 16-bit values and fp32 in int64 words (at a tag above 2^16), and for fp32 in int32 words
    rounded to 15 mantissa bits: within half a unit there, 2^-16 of its magnitude, with NaN (NVIDIA's
    0x7FFFFFFF too, which the rounding would wrap) kept NaN and infinities kept. (The collect runs
    only once the arrival flags are right: with wrong ones it would spin forever.)"""
    tags = jnp.array(
        [1, 2, 255, 256, 257, 511, 32767, 32768, 32769, 65535, 65536, 65537, 65538, 98303, 131071, 131072],
        jnp.int32,
    )
    if word_bits == 64:  # one tag per collect
        tags = jnp.full_like(tags, 131072)
    values = jax.random.normal(jax.random.key(7), tags.shape, jnp.float32).astype(dtype)
    assert bool(jnp.any(values < 0)) and bool(jnp.any(values > 0))
    if dtype == jnp.float32:  # NVIDIA's NaN (the rounding must not wrap it), infinities, a carry, near FLT_MAX
        special = jnp.array([0x7FFFFFFF, -1, 0x7F800000, -8388608, 0x3FFFFFFF, 0x7F7FFF7F], jnp.int32)
        values = values.at[: special.size].set(jax.lax.bitcast_convert_type(special, jnp.float32))
    n = tags.shape[0]
    flags = jax.ShapeDtypeStruct((n,), jnp.int32)
    ring = jax.ShapeDtypeStruct((n, word_bits // 32), jnp.int32)
    words, arrived, stale = launch.triton_call(
        values,
        tags,
        kernel=_post_kernel,
        grid=(1,),
        zeroed_outputs=(0, 1, 2),
        N=n,
        WORD_BITS=word_bits,
        out_shape=(ring, flags, flags),
    )
    if word_bits == 32:
        np.testing.assert_array_equal(np.asarray(arrived), np.ones(n, np.int32))
        np.testing.assert_array_equal(np.asarray(stale), np.zeros(n, np.int32))
    collected = launch.triton_call(
        words,
        tags,
        kernel=_collect_kernel,
        grid=(1,),
        N=n,
        WORD_BITS=word_bits,
        out_shape=jax.ShapeDtypeStruct((n,), dtype),
    )
    got, want = np.asarray(collected.astype(jnp.float32)), np.asarray(values.astype(jnp.float32))
    if dtype == jnp.float32 and word_bits == 32:
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        finite = ~np.isnan(want)
        got, want = got[finite], want[finite]
        with np.errstate(invalid="ignore"):  # inf - inf: the infinities are compared exactly below
            close = np.abs(got - want) <= 2.0**-16 * np.abs(want)
        assert np.all(close | (got == want)), (got, want)
        assert np.any(got != want)  # rounded to 15 mantissa bits
    else:
        np.testing.assert_array_equal(got, want)


@triton.jit
def _walk_program_kernel(indices, B: tl.constexpr, NH: tl.constexpr, SPLIT: tl.constexpr, BLOCK_B: tl.constexpr):
    """Stores :func:`_walk_program`'s (part, batch block, head) at the program's place in ``indices``
    (SPLIT, batch blocks, NH, 3)."""
    part, batch_block, head = _walk_program(B, NH, SPLIT, BLOCK_B)
    batch_blocks: tl.constexpr = (B + BLOCK_B - 1) // BLOCK_B
    place = ((tl.program_id(0) * batch_blocks + tl.program_id(1)) * NH + tl.program_id(2)) * 3
    tl.store(indices + place, part)
    tl.store(indices + place + 1, batch_block)
    tl.store(indices + place + 2, head)


@pytest.mark.parametrize("B", [16, 40], ids=["one-batch-block", "three-batch-blocks"])
def test_walk_program_gives_the_program_ids(B):
    """The walks' (part, batch block, head), taken apart from one index so that the compiler sees their
    ranges, are the program ids of the grid (SPLIT, batch blocks, NH), with one batch block and with three
    (the last one short)."""
    split, block_b, heads = 3, 16, 2
    blocks = -(-B // block_b)
    got = launch.triton_call(
        kernel=_walk_program_kernel,
        grid=(split, blocks, heads),
        out_shape=jax.ShapeDtypeStruct((split, blocks, heads, 3), jnp.int32),
        B=B,
        NH=heads,
        SPLIT=split,
        BLOCK_B=block_b,
    )
    want = np.stack(np.meshgrid(np.arange(split), np.arange(blocks), np.arange(heads), indexing="ij"), axis=-1)
    np.testing.assert_array_equal(np.asarray(got), want)
