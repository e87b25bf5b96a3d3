"""Registry entry ``"recurrent--jax"``: the sLSTM recurrence as a ``lax.scan`` over time (the reference
backend; its autodiff defines the exact gradients the Triton backward reproduces).

Per head and unit, with gate pre-activations ``g_t = pre_t + h_{t-1} R`` (fp32; ``pre_t = gates_t + bias``,
:func:`~.common.gate_preactivations`)::

    m_t = max(logsigmoid(f_t) + m_{t-1}, i_t)
    c_t = exp(logsigmoid(f_t) + m_{t-1} - m_t) c_{t-1} + exp(i_t - m_t) tanh(z_t)
    n_t = exp(logsigmoid(f_t) + m_{t-1} - m_t) n_{t-1} + exp(i_t - m_t)
    h_t = sigmoid(o_t) c_t / n_t

From the initial m = ``M_INITIAL`` either the input or the forget term of n has weight 1 at every
step, so n_t >= 1 and c / n is always defined. The recurrent product ``h_{t-1} R`` takes h in R's
dtype and accumulates in fp32. The scan closes over R widened to fp32 (the products are the same: a
bf16 h times a bf16-valued R is exact in fp32), so autodiff sums R's gradient over the steps in fp32;
closing over a bf16 R would sum S step terms in bf16 (relative error ~ sqrt(S) 2^-9: 7.7e-2 at S = 512
on an H200).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .common import NUM_GATES, GateInputs, States, check_inputs, gate_preactivations

KERNEL_NAME = "recurrent--jax"


def recurrent_product(h: jax.Array, recurrent_kernel: jax.Array, h_dtype=None) -> jax.Array:
    """h (..., NH, DH) rounded to ``h_dtype`` (default R's dtype) times the head-wise R (4, NH, DH, DH)
    -> (..., 4, NH, DH) fp32 (at least)."""
    h = h.astype(h_dtype or recurrent_kernel.dtype).astype(recurrent_kernel.dtype)
    return jnp.einsum("...hd,ghde->...ghe", h, recurrent_kernel, preferred_element_type=jnp.float32)


def widened(recurrent_kernel: jax.Array) -> jax.Array:
    """R in at least fp32, for a scan to close over (its gradient then sums over the steps in fp32); the
    cell steps round h to R's original dtype (``h_dtype``)."""
    return recurrent_kernel.astype(jnp.promote_types(recurrent_kernel.dtype, jnp.float32))


def cell_step(recurrent_kernel: jax.Array, state: States, pre: jax.Array, h_dtype=None) -> States:
    """One time step: state (c, n, m, h) each (B, NH, DH) fp32; pre (B, 4, NH, DH) fp32; h enters the
    product in ``h_dtype`` (default R's dtype)."""
    c, n, m, h = state
    g = pre + recurrent_product(h, recurrent_kernel, h_dtype)
    i, f, z, o = (g[:, j] for j in range(NUM_GATES))
    log_f_plus_m = jax.nn.log_sigmoid(f) + m
    m_new = jnp.maximum(log_f_plus_m, i)
    f_gate, i_gate = jnp.exp(log_f_plus_m - m_new), jnp.exp(i - m_new)
    c_new = f_gate * c + i_gate * jnp.tanh(z)
    n_new = f_gate * n + i_gate
    return States(c_new, n_new, m_new, jax.nn.sigmoid(o) * c_new / n_new)


def slstm_scan(
    gates: GateInputs,
    bias: jax.Array,
    recurrent_kernel: jax.Array,
    initial: States | None = None,
    *,
    restarts: jax.Array | None = None,
    fresh: States | None = None,
):
    """gates (i, f, z, o) each (B, S, NH, DH), bias (4, NH, DH) fp32, recurrent_kernel (4, NH, DH, DH),
    optional initial :class:`States` -> (h (B, S, NH, DH) fp32, the :class:`States` after the last step). ``restarts``
    (B, S) bool with ``fresh`` (the zero :class:`States`): the state becomes ``fresh`` before every step
    marked (document resets; the layer's packed-sequence path)."""
    dims, gates, initial = check_inputs(KERNEL_NAME, gates, bias, recurrent_kernel, initial)
    if restarts is not None:
        if restarts.shape != (dims.B, dims.S) or restarts.dtype != jnp.bool_:
            raise ValueError(
                f"{KERNEL_NAME}: restarts must be bool (B, S) = {(dims.B, dims.S)}, "
                f"got {restarts.dtype} {restarts.shape}"
            )
        if fresh is None:
            raise ValueError(f"{KERNEL_NAME}: restarts needs fresh, the States a restarted row starts from")
    wide = widened(recurrent_kernel)

    def step(state, inputs):
        pre_t, restart = inputs
        if restart is not None:  # (B,): rows whose document starts at this step
            state = States(*(jnp.where(restart[:, None, None], f, s) for f, s in zip(fresh, state)))
        new = cell_step(wide, state, pre_t, recurrent_kernel.dtype)
        return new, new.h

    pre = gate_preactivations(gates, bias)  # (B, S, 4, NH, DH)
    last, hs = jax.lax.scan(step, initial, (pre.swapaxes(0, 1), None if restarts is None else restarts.T))
    return hs.swapaxes(0, 1), last
