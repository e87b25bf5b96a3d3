"""sLSTM layer (Beck et al. 2024): scalar memory with exponential gating and a stabiliser state,
head-wise block-diagonal input and recurrent weights, optional causal conv, multi-head group norm.

The recurrence (gates i, f, z, o; stabiliser m; fp32 state c, n, m, h) runs in a kernel of
``xlstm_flax.kernels.slstm`` chosen by ``sLSTMLayerConfig.kernel`` (the math: docs/slstm.md). The
recurrent product takes h and R in the layer's compute dtype and accumulates in fp32.
x (B, S, D) -> y (B, S, D); state :class:`sLSTMState`.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from xlstm_flax.kernels.slstm import (
    NUM_GATES,
    GateInputs,
    States,
    gate_preactivations,
    get_slstm_kernel,
    initial_states,
    resolve_slstm_kernel_name,
)
from xlstm_flax.kernels.slstm.reference import cell_step, slstm_scan

from ..sharding import param, per_device_at
from .config import sLSTMLayerConfig
from .conv import CausalConv1d
from .headwise import HeadwiseLinear
from .norms import MultiHeadNorm
from .segments import segment_starts


class sLSTMState(NamedTuple):
    c: jax.Array  # (B, NH, DH) fp32
    n: jax.Array
    m: jax.Array
    h: jax.Array
    conv: jax.Array | None  # (B, K - 1, D) last conv inputs, None without conv


def _run_kernel(name: str, gates: GateInputs, bias, recurrent_kernel, initial: States):
    """The sLSTM kernel ``name`` on the gate inputs (B, S, NH, DH) each, bias (4, NH, DH), R (4, NH, DH, DH)
    and the initial state; under a device mesh it runs per device on its batch and head shard
    (:func:`xlstm_flax.sharding.per_device_at`; sLSTM heads are independent)."""
    kernel = get_slstm_kernel(name)
    batch_and_heads = ((0, 2),) * NUM_GATES + ((None, 1), (None, 1))  # the gates, bias, R; then (B, NH, DH) states
    run = per_device_at(
        lambda i, f, z, o, bias, r, *state: kernel(GateInputs(i, f, z, o), bias, r, States(*state)),
        resolve_slstm_kernel_name(name),
        lambda n: batch_and_heads[n] if n < len(batch_and_heads) else (0, 1),
        lambda spec: (spec(0, 2), spec(0, 1)),  # h (B, S, NH, DH), the last States
    )
    hs, last = run(*gates, bias, recurrent_kernel, *initial)
    return hs, States(*last)


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
            CausalConv1d(
                dim, config.conv_kernel_size, channel_axis="heads", dtype=dtype, param_dtype=param_dtype, rngs=rngs
            )
            if config.conv_kernel_size > 0
            else None
        )
        headwise = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.igate = HeadwiseLinear(dim, dim, nh, **headwise)
        self.fgate = HeadwiseLinear(dim, dim, nh, **headwise)
        self.zgate = HeadwiseLinear(dim, dim, nh, **headwise)
        self.ogate = HeadwiseLinear(dim, dim, nh, **headwise)
        self.recurrent_kernel = param(jnp.zeros((NUM_GATES, nh, dh, dh), param_dtype), None, "heads", None, None)
        bias = jnp.zeros((NUM_GATES, nh, dh), param_dtype)
        bias = bias.at[0].set(config.igate_bias_init)
        bias = bias.at[1].set(jnp.linspace(config.fgate_bias_min, config.fgate_bias_max, dh).astype(param_dtype))
        self.bias = param(bias, None, "heads", None)
        self.group_norm = MultiHeadNorm(nh, dh, eps=config.norm_eps, param_dtype=param_dtype)

    def init_state(self, batch_size: int) -> sLSTMState:
        conv = None if self.conv1d is None else self.conv1d.init_state(batch_size)
        return sLSTMState(*initial_states(batch_size, self.num_heads, self.head_dim), conv)

    def _gate_inputs(self, x: jax.Array, conv_state, segment_ids=None):
        """x (B, S, D) -> (the gates' input projections :class:`GateInputs`, each (B, S, NH, DH) in the
        compute dtype, without bias; the new conv state)."""
        B, S, _ = x.shape
        x_gates, new_conv_state = x, None
        if self.conv1d is not None:
            x_gates, new_conv_state = self.conv1d(x, conv_state, segment_ids)
            x_gates = jax.nn.silu(x_gates)
        projections = (self.igate(x_gates), self.fgate(x_gates), self.zgate(x), self.ogate(x))
        return GateInputs(*(p.reshape(B, S, self.num_heads, self.head_dim) for p in projections)), new_conv_state

    def _bias(self) -> jax.Array:
        """The gates' bias (4, NH, DH) fp32."""
        return self.bias[...].astype(jnp.float32)

    def _recurrent_kernel(self) -> jax.Array:
        """R (4, NH, DH, DH) in the compute dtype."""
        return self.recurrent_kernel[...].astype(self.dtype)

    def __call__(
        self,
        x: jax.Array,
        state: sLSTMState | None = None,
        *,
        return_state: bool = False,
        segment_ids: jax.Array | None = None,
    ):
        """x (B, S, D) -> (y (B, S, D), the state after the last token if ``return_state`` else None).

        ``segment_ids`` (B, S) int: the state (and the conv window) restarts at each new segment; the
        sLSTM kernels take no resets, so then the layer runs the reference scan with restarts."""
        if state is None:
            state = self.init_state(x.shape[0])
        gates, conv_state = self._gate_inputs(x, state.conv, segment_ids)
        args = (gates, self._bias(), self._recurrent_kernel(), States(*state[:4]))
        if segment_ids is None:
            hs, last = _run_kernel(self.config.kernel, *args)
        else:
            fresh = initial_states(x.shape[0], self.num_heads, self.head_dim)
            hs, last = slstm_scan(*args, restarts=segment_starts(segment_ids), fresh=fresh)
        y = self.group_norm(hs).astype(self.dtype)
        return y, (sLSTMState(*last, conv_state) if return_state else None)

    def step(self, x: jax.Array, state: sLSTMState):
        """One token as one jnp cell step (no sequence kernel): x (B, D) -> (y (B, D), new state)."""
        gates, conv_state = self._gate_inputs(x[:, None], state.conv)
        pre = gate_preactivations(GateInputs(*(g[:, 0] for g in gates)), self._bias())  # (B, 4, NH, DH)
        new = cell_step(self._recurrent_kernel(), States(*state[:4]), pre)
        y = self.group_norm(new.h[:, None]).astype(self.dtype)
        return y[:, 0], sLSTMState(*new, conv_state)
