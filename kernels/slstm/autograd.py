"""Registry entry ``"recurrent--triton"``: the fused Triton sLSTM (triton_launch.py) behind the sLSTM
calling convention, with an exact backward in ``jax.custom_vjp``.

The forward kernel reads the four gate inputs and the bias itself (no stacked fp32 copy of them is
made), stores every state (c, n, m, h per step, fp32) and, under differentiation only, every step's full
gate pre-activations ``g = gate + bias + h_{t-1} R`` (fp32, 4 x the bytes of h; a forward alone, e.g.
prefill, writes none of them). The backward runs the reverse-time kernel for ``dg`` (fp32), the bias
gradient (dg summed over the steps as the walk goes) and the initial state's cotangents; the recurrent
kernel's gradient ``sum_t h_{t-1}^T dg_t`` (fp32 accumulation; products about fp32-accurate for fp32 and
fp16 R, to about 2^-17 for bf16 R), which also writes the gate inputs' cotangents (dg in their dtype),
comes from a kernel after the walk or, with ``follow_dr=True``, from programs of the same launch that
follow the walk through time: no XLA matmul and no XLA pass over dg in the backward.
Gradients equal autodiff of the scan (reference.py), including the stabiliser's path. The residuals g
and the history are named ``KERNEL_RESIDUALS`` for rematerialisation policies.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from ..common import KERNEL_RESIDUALS
from ..triton import launch
from . import triton_launch
from .common import GateInputs, States, check_inputs

KERNEL_NAME = "recurrent--triton"


def slstm_triton(gates: GateInputs, bias, recurrent_kernel, initial: States | None = None, **tuning):
    """gates (i, f, z, o) each (B, S, NH, DH) fp32/bf16/fp16, bias (4, NH, DH) fp32, recurrent_kernel
    (4, NH, DH, DH) fp32/bf16/fp16, optional initial :class:`States` -> (h (B, S, NH, DH) fp32, the
    :class:`States` after the last step). ``tuning``: block_b, block_dh, block_k, split, num_warps,
    num_stages, resident, follow_dr (backward only; see triton_launch.py); each one given applies to both
    walks, each one left out takes the walk's own default."""
    dims, gates, initial = check_inputs(KERNEL_NAME, gates, bias, recurrent_kernel, initial)
    if bias.dtype != jnp.float32:
        raise ValueError(f"{KERNEL_NAME}: bias must be float32, got {bias.dtype}")
    triton_launch.check_triton_dtype(KERNEL_NAME, "gate inputs", gates.i.dtype)
    triton_launch.check_triton_dtype(KERNEL_NAME, "recurrent_kernel", recurrent_kernel.dtype)
    config = (dims, jnp.dtype(gates.i.dtype)) + tuple(
        triton_launch.resolve_tuning(name, dims, recurrent_dtype=recurrent_kernel.dtype, backward=b, **tuning)
        for name, b in ((KERNEL_NAME, False), (f"{KERNEL_NAME} (backward)", True))
    )
    launch.require_triton_backend(KERNEL_NAME, "recurrent--jax")
    return _slstm(gates, bias, recurrent_kernel, initial, config)


def _forward(gates, bias, recurrent_kernel, initial, config, store_gates: bool):
    """(g or a placeholder, the :class:`States` histories) from the forward kernel."""
    dims, _, forward_tuning, _ = config
    return triton_launch.slstm_fw(gates, bias, recurrent_kernel, initial, dims, forward_tuning, store_gates=store_gates)


def _outputs(history: States):
    """h (B, S, NH, DH) and the last States from the per-step history (B, S + 1, NH, DH) each."""
    return history.h[:, 1:], States(*(x[:, -1] for x in history))


# config: (Dims, the gate inputs' dtype, forward and backward Tuning); g not stored
@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _slstm(gates, bias, recurrent_kernel, initial, config):
    return _outputs(_forward(gates, bias, recurrent_kernel, initial, config, store_gates=False)[1])


def _slstm_fwd(gates, bias, recurrent_kernel, initial, config):
    # tagged before the outputs are sliced from history, so that a policy keeping the tag needs no second forward
    tag = functools.partial(checkpoint_name, name=KERNEL_RESIDUALS)
    g, history = jax.tree.map(tag, _forward(gates, bias, recurrent_kernel, initial, config, store_gates=True))
    return _outputs(history), (g, recurrent_kernel, history)


def _slstm_bwd(config, residuals, cotangents):
    g, recurrent_kernel, history = residuals
    dh_seq, d_last = cotangents
    dims, gate_dtype, _, backward_tuning = config
    d_recurrent, d_gates, d_bias, d_initial = triton_launch.slstm_bw(
        g, recurrent_kernel, history, dh_seq, States(*d_last), dims, backward_tuning, gate_dtype
    )
    return d_gates, d_bias, d_recurrent.astype(recurrent_kernel.dtype), d_initial


_slstm.defvjp(_slstm_fwd, _slstm_bwd)
