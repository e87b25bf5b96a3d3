"""sLSTM layer (Beck et al. 2024): scalar memory with exponential gating and a stabiliser state,
head-wise block-diagonal input and recurrent weights, optional causal conv, multi-head group norm.

Per head and unit (gate pre-activations ``g = W x_t + R h_{t-1} + b``, all fp32)::

    m_t = max(logsigmoid(f_t) + m_{t-1}, i_t)
    c_t = exp(logsigmoid(f_t) + m_{t-1} - m_t) c_{t-1} + exp(i_t - m_t) tanh(z_t)
    n_t = exp(logsigmoid(f_t) + m_{t-1} - m_t) n_{t-1} + exp(i_t - m_t)
    h_t = sigmoid(o_t) c_t / n_t

The initial m is a huge negative number, so the first step sets m_1 = i_1 and n_1 = 1; afterwards
either the input or the forget term of n has weight 1, hence n_t >= 1 and c / n is always defined.
x (B, S, D) -> y (B, S, D); state :class:`sLSTMState`.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from .config import sLSTMLayerConfig
from .conv import CausalConv1d
from .headwise import HeadwiseLinear
from .norms import MultiHeadNorm
from .segments import segment_starts

M_INITIAL = -1e30
GATES = ("i", "f", "z", "o")


class sLSTMState(NamedTuple):
    c: jax.Array  # (B, NH, DH) fp32
    n: jax.Array
    m: jax.Array
    h: jax.Array
    conv: jax.Array | None  # (B, K - 1, D) last conv inputs, None without conv


def _cell_step(recurrent_kernel, carry, pre):
    """One time step: carry (c, n, m, h) each (B, NH, DH); pre (B, 4, NH, DH) input part of gates."""
    c, n, m, h = carry
    g = pre + jnp.einsum("bhd,ghde->bghe", h, recurrent_kernel)
    i, f, z, o = (g[:, j] for j in range(len(GATES)))
    log_f_plus_m = jax.nn.log_sigmoid(f) + m
    m_new = jnp.maximum(log_f_plus_m, i)
    f_gate, i_gate = jnp.exp(log_f_plus_m - m_new), jnp.exp(i - m_new)
    c_new = f_gate * c + i_gate * jnp.tanh(z)
    n_new = f_gate * n + i_gate
    h_new = jax.nn.sigmoid(o) * c_new / n_new
    return (c_new, n_new, m_new, h_new), h_new


def _scan_cells(recurrent_kernel, fresh, carry, pre, segment_ids):
    """The recurrence over time: pre (B, S, 4, NH, DH) -> (last carry, h (S, B, NH, DH)); with
    ``segment_ids`` the carry is replaced by ``fresh`` (the initial carry) at every segment start."""
    pre = pre.transpose(1, 0, 2, 3, 4)
    if segment_ids is None:
        return jax.lax.scan(lambda carry, p: _cell_step(recurrent_kernel, carry, p), tuple(carry), pre)

    def step(carry, inputs):
        p, reset = inputs
        carry = tuple(jnp.where(reset[:, None, None], f, c) for f, c in zip(fresh, carry))
        return _cell_step(recurrent_kernel, carry, p)

    return jax.lax.scan(step, tuple(carry), (pre, segment_starts(segment_ids).T))


class sLSTMLayer(nnx.Module):
    """Parameters: conv1d (optional), igate, fgate, zgate, ogate (head-wise), recurrent_kernel
    (4, NH, DH, DH), bias (4, NH, DH), group_norm."""

    def __init__(
        self,
        dim: int,
        config: sLSTMLayerConfig,
        *,
        num_blocks: int,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        del num_blocks  # no projection into the residual stream here
        self.config, self.dtype = config, dtype
        self.num_heads = nh = config.num_heads
        self.head_dim = dh = dim // nh
        self.conv1d = (
            CausalConv1d(dim, config.conv_kernel_size, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
            if config.conv_kernel_size > 0
            else None
        )
        headwise = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.igate = HeadwiseLinear(dim, dim, nh, **headwise)
        self.fgate = HeadwiseLinear(dim, dim, nh, **headwise)
        self.zgate = HeadwiseLinear(dim, dim, nh, **headwise)
        self.ogate = HeadwiseLinear(dim, dim, nh, **headwise)
        self.recurrent_kernel = nnx.Param(jnp.zeros((len(GATES), nh, dh, dh), param_dtype))
        bias = jnp.zeros((len(GATES), nh, dh), param_dtype)
        bias = bias.at[0].set(config.igate_bias_init)
        bias = bias.at[1].set(jnp.linspace(config.fgate_bias_min, config.fgate_bias_max, dh))
        self.bias = nnx.Param(bias)
        self.group_norm = MultiHeadNorm(nh, dh, eps=config.norm_eps, param_dtype=param_dtype)

    def init_state(self, batch_size: int) -> sLSTMState:
        zeros = jnp.zeros((batch_size, self.num_heads, self.head_dim), jnp.float32)
        conv = None if self.conv1d is None else self.conv1d.init_state(batch_size)
        return sLSTMState(zeros, zeros, jnp.full_like(zeros, M_INITIAL), zeros, conv)

    def __call__(
        self,
        x: jax.Array,
        state: sLSTMState | None = None,
        *,
        return_state: bool = False,
        segment_ids: jax.Array | None = None,
    ):
        """x (B, S, D) -> (y (B, S, D), the state after the last token if ``return_state`` else None).

        ``segment_ids`` (B, S) int: the state (and the conv window) restarts at each new segment."""
        B, S, D = x.shape
        if state is None:
            state = self.init_state(B)
        x_gates, conv_state = x, None
        if self.conv1d is not None:
            x_gates, conv_state = self.conv1d(x, state.conv, segment_ids)
            x_gates = jax.nn.silu(x_gates)
        pre = jnp.stack([self.igate(x_gates), self.fgate(x_gates), self.zgate(x), self.ogate(x)], axis=2)
        pre = pre.astype(jnp.float32).reshape(B, S, len(GATES), self.num_heads, self.head_dim)
        pre = pre + self.bias[...].astype(jnp.float32)
        recurrent_kernel = self.recurrent_kernel[...].astype(jnp.float32)
        (c, n, m, h), hs = _scan_cells(recurrent_kernel, self.init_state(B)[:4], state[:4], pre, segment_ids)
        y = self.group_norm(hs.transpose(1, 0, 2, 3)).astype(self.dtype)
        return y, (sLSTMState(c, n, m, h, conv_state) if return_state else None)

    def step(self, x: jax.Array, state: sLSTMState):
        """One token: x (B, D) -> (y (B, D), new state)."""
        y, state = self(x[:, None], state, return_state=True)
        return y[:, 0], state
