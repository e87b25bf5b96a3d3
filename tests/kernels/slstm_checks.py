"""Shared sLSTM kernel checks: random inputs, the float64 reference (autodiff of the scan backend,
itself checked against a literal numpy loop in tests/model/test_layers.py) and the
comparison of a backend's values, last state and gradients of every input against it.

Error measure: max |error| / max |reference| per array (tests/kernels/compare.py).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from tests.kernels.compare import assert_close
from xlstm_flax.kernels.slstm import NUM_GATES, GateInputs, States, get_slstm_kernel, triton_launch
from xlstm_flax.kernels.slstm.common import Dims

ARG_NAMES = GateInputs._fields + ("bias", "recurrent_kernel", "c0", "n0", "m0", "h0")
BIAS, RECURRENT, INITIAL = NUM_GATES, NUM_GATES + 1, NUM_GATES + 2  # positions in ARG_NAMES


def make_inputs(
    seed: int,
    B: int,
    S: int,
    NH: int,
    DH: int,
    recurrent_dtype=jnp.float32,
    *,
    initial=True,
    gate_dtype=jnp.float32,
):
    """Fresh random inputs as a list in ARG_NAMES order (initial states None unless ``initial``): gate
    inputs ~ N(0, 1.5^2) in ``gate_dtype``, bias ~ N(0, 0.5^2) plus 2 for the forget gate, R ~ N(0, 1/DH),
    c0, h0 ~ N(0, 1), n0 in [1, 3), m0 ~ N(0, 1)."""
    ks = jax.random.split(jax.random.key(seed), 7)
    gates = 1.5 * jax.random.normal(ks[0], (NUM_GATES, B, S, NH, DH), jnp.float32)
    bias = (0.5 * jax.random.normal(ks[6], (NUM_GATES, NH, DH), jnp.float32)).at[1].add(2.0)
    recurrent = (jax.random.normal(ks[1], (NUM_GATES, NH, DH, DH), jnp.float32) / np.sqrt(DH)).astype(recurrent_dtype)
    inputs = [*gates.astype(gate_dtype), bias, recurrent]
    if not initial:
        return inputs + [None] * 4
    shape = (B, NH, DH)
    c0, m0, h0 = (jax.random.normal(k, shape, jnp.float32) for k in ks[2:5])
    n0 = 1.0 + 2.0 * jax.random.uniform(ks[5], shape, jnp.float32)
    return inputs + [c0, n0, m0, h0]


def random_cotangents(seed: int, gate) -> tuple:
    """Weights of a linear loss on h (B, S, NH, DH), the shape of a ``gate`` input, and on each of the
    last c, n, m, h."""
    B, S, NH, DH = gate.shape
    ks = jax.random.split(jax.random.key(seed), 5)
    return jax.random.normal(ks[0], (B, S, NH, DH)), States(*(jax.random.normal(k, (B, NH, DH)) for k in ks[1:]))


def outputs_and_gradients(kernel, args, cotangents, **options):
    """(h, last States) and the gradients of the linear loss w.r.t. every non-None arg (None elsewhere)."""
    present = [i for i, a in enumerate(args) if a is not None]

    def run(*xs):
        full = list(args)
        for i, x in zip(present, xs):
            full[i] = x
        initial = None if full[INITIAL] is None else States(*full[INITIAL:])
        return kernel(GateInputs(*full[:NUM_GATES]), full[BIAS], full[RECURRENT], initial, **options)

    outputs, vjp = jax.vjp(run, *(args[i] for i in present))
    grads = vjp(cotangents)
    full_grads = [None] * len(args)
    for i, g in zip(present, grads):
        full_grads[i] = g
    return outputs, full_grads


def reference(args, cotangents):
    """float64 outputs and gradients of the scan backend ("recurrent--jax"), computed on the CPU (XLA's
    GPU backend has no float64 GEMM: "GEMM is not supported by cublasLt")."""
    with jax.enable_x64(), jax.default_device(jax.devices("cpu")[0]):  # the gate inputs and the bias too
        args64 = [
            None if a is None else jnp.asarray(np.asarray(jnp.asarray(a, jnp.float32)), jnp.float64) for a in args
        ]
        cot64 = jax.tree.map(lambda c: jnp.asarray(c, jnp.float64), cotangents)
        outputs, grads = outputs_and_gradients(get_slstm_kernel("recurrent--jax"), args64, cot64)
        return jax.tree.map(np.asarray, outputs), [None if g is None else np.asarray(g) for g in grads]


def check_against_reference(
    kernel, args, cotangents, tol_values: float, tol_grads: float, *, tol_gate_grads: float | None = None, **options
) -> None:
    """Values (h and every last state) within ``tol_values``, gradients of every input within ``tol_grads``,
    those of the gate inputs (in their own dtype) within ``tol_gate_grads`` if given.

    With a bf16/fp16 R the loss weighs h and the last h only. The last c, n and m carry the stabiliser
    m = max(log f + m_prev, i), so their gradients jump where the two sides tie; bf16 rounding of h moves
    gates by ~1e-3 and flips such near-ties, and one flip changes every earlier step's gradient (measured
    with the scan backend itself: d pre 0.26-0.30 at 64x128x8x64 and 16x512x4x256). h is invariant to m
    (c and n scale together), so its gradients are continuous: there the scan measured <= 4e-3."""
    if args[RECURRENT].dtype != jnp.float32:
        weights_h, last = cotangents
        cotangents = (weights_h, States(*(jnp.zeros_like(x) for x in last[:3]), last.h))
    (h, last), grads = outputs_and_gradients(kernel, args, cotangents, **options)
    (ref_h, ref_last), ref_grads = reference(args, cotangents)
    assert_close(h, ref_h, tol_values, "h")
    for name, got, want in zip(States._fields, last, ref_last):
        assert_close(got, want, tol_values, f"last {name}")
    for n, (name, got, want) in enumerate(zip(ARG_NAMES, grads, ref_grads)):
        if want is not None:
            tol = tol_gate_grads if n < NUM_GATES and tol_gate_grads is not None else tol_grads
            assert_close(got, want, tol, f"d {name}")


def case_id(case) -> str:
    """Test id of a case ``(R dtype, B, S, NH, DH, initial states, tuning)``."""
    dtype, B, S, NH, DH, initial, tuning = case
    return (
        f"{jnp.dtype(dtype).name}-B{B}S{S}NH{NH}DH{DH}"
        + ("-initial" if initial else "")
        + "".join(f"-{key}{value}" for key, value in tuning.items())
    )


def check_triton_case(case, tolerances: dict) -> None:
    """Runs "recurrent--triton" on fresh inputs of ``case`` (see :func:`case_id`) vs the float64 reference,
    within ``tolerances[R dtype] = (values, gradients)``."""
    dtype, B, S, NH, DH, initial, tuning = case
    seed = B + S + NH + DH
    args = make_inputs(seed, B, S, NH, DH, dtype, initial=initial)
    check_against_reference(
        get_slstm_kernel("recurrent--triton"), args, random_cotangents(seed + 1, args[0]), *tolerances[dtype], **tuning
    )


def check_dr_followers(seed: int, dims: Dims, dtype, tol: float, **tuning) -> None:
    """The Triton backward on fresh inputs of ``dims`` (gate inputs and R in ``dtype``), at the default
    tuning with ``tuning``, its dR from programs that follow the walk and from the dR kernel after it.
    The same walk: the gate inputs' cotangents and the initial state's cotangents identical, the bias
    gradient (its sum over the batch rows is XLA's, fused differently in the two programs) within 1e-6
    (H100: 1.5e-7 at S = 1000, 2.8e-7 at 2048); dR, the same products summed in another order, within
    ``tol`` of the kernel's."""
    args = make_inputs(seed, *dims, dtype, gate_dtype=dtype)
    gates, bias, recurrent, initial = (
        GateInputs(*args[:NUM_GATES]),
        args[BIAS],
        args[RECURRENT],
        States(*args[INITIAL:]),
    )
    forward = triton_launch.resolve_tuning("fw", dims, recurrent_dtype=dtype, **tuning)
    backward = triton_launch.resolve_tuning("bw", dims, recurrent_dtype=dtype, backward=True, follow_dr=True, **tuning)
    g, history = jax.jit(lambda *a: triton_launch.slstm_fw(*a, dims, forward))(gates, bias, recurrent, initial)
    dh_seq, d_last = random_cotangents(seed + 1, gates.i)

    def backward_with(tuning):
        return jax.jit(lambda *a: triton_launch.slstm_bw(*a, dims, tuning, dtype))(
            g, recurrent, history, dh_seq, d_last
        )

    (dr_followed, *followed), (dr_after, *after) = (
        backward_with(t) for t in (backward, dataclasses.replace(backward, follow_dr=False))
    )
    assert_close(dr_followed, dr_after, tol, "dR")
    d_gates, d_bias, d_initial = followed
    assert_close(d_bias, after[1], 1e-6, "bias gradient")
    identical = jax.tree.leaves_with_path((d_gates, d_initial))
    for (path, got), want in zip(identical, jax.tree.leaves((after[0], after[2])), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=jax.tree_util.keystr(path))
