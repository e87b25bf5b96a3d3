"""The mLSTM block of the xLSTM paper (Beck et al. 2024, fig. 10) as a sequence-mixing layer.

x (B, S, D) -> up-projection to (x_in, z), each (B, S, DI) -> causal conv + swish on x_in feeds q, k
(head-wise projections), v from x_in -> gates from [q, k, v] (fp32) -> mLSTM kernel -> multi-head
group norm -> + learnable_skip * conv output -> * swish(z) -> down-projection -> (B, S, D).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from ..sharding import param
from .config import mLSTMLayerConfig
from .conv import CausalConv1d
from .headwise import HeadwiseLinear
from .init import dense, gate_projections, small_init, wang_init
from .mlstm_cell import mLSTMMixer, mLSTMState, zero_state
from .norms import MultiHeadNorm


class mLSTMPaperState(NamedTuple):
    cell: mLSTMState
    conv: jax.Array  # (B, K - 1, DI) last conv inputs


class mLSTMPaperLayer(mLSTMMixer):
    """Parameters: proj_up, conv1d, q_proj, k_proj, v_proj, igate, fgate, outnorm, learnable_skip,
    proj_down. State: :class:`mLSTMPaperState`."""

    def __init__(
        self,
        dim: int,
        config: mLSTMLayerConfig,
        *,
        num_blocks: int,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.config = config
        self.num_heads = nh = config.num_heads
        self.inner = inner = config.inner_dim(dim)
        proj = dict(use_bias=config.use_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        # (x_in | z) halves: the output axis stays whole so that each half splits by heads locally
        self.proj_up = dense(dim, 2 * inner, axes=("embed", None), kernel_init=small_init(dim), **proj)
        self.conv1d = CausalConv1d(
            inner, config.conv_kernel_size, channel_axis="heads", dtype=dtype, param_dtype=param_dtype, rngs=rngs
        )
        qkv_heads = inner // config.qkv_proj_blocksize
        headwise = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.q_proj = HeadwiseLinear(inner, inner, qkv_heads, **headwise)
        self.k_proj = HeadwiseLinear(inner, inner, qkv_heads, **headwise)
        self.v_proj = HeadwiseLinear(inner, inner, qkv_heads, **headwise)
        self.igate, self.fgate = gate_projections(3 * inner, config, in_axis=None, param_dtype=param_dtype, rngs=rngs)
        self.outnorm = MultiHeadNorm(nh, inner // nh, eps=config.norm_eps, param_dtype=param_dtype)
        self.learnable_skip = param(jnp.ones((inner,), param_dtype), "heads")
        self.proj_down = dense(inner, dim, axes=("heads", "embed"), kernel_init=wang_init(dim, num_blocks), **proj)

    def init_state(self, batch_size: int) -> mLSTMPaperState:
        dh = self.inner // self.num_heads
        return mLSTMPaperState(zero_state(batch_size, self.num_heads, dh, dh), self.conv1d.init_state(batch_size))

    def _forward(self, x, cell, state, segment_ids):
        B, S, _ = x.shape
        x_in, z = jnp.split(self.proj_up(x), 2, axis=-1)
        x_conv, conv_state = self.conv1d(x_in, None if state is None else state.conv, segment_ids)
        x_conv = jax.nn.silu(x_conv)
        q, k, v = self.q_proj(x_conv), self.k_proj(x_conv), self.v_proj(x_in)

        def heads(t):  # (B, S, DI) -> (B, NH, S, DI / NH)
            return t.reshape(B, S, self.num_heads, -1).transpose(0, 2, 1, 3)

        qkv = jnp.concatenate([q, k, v], axis=-1)
        i, f = self.igate(qkv).transpose(0, 2, 1), self.fgate(qkv).transpose(0, 2, 1)
        h, cell_state = cell(heads(q), heads(k), heads(v), i, f, None if state is None else state.cell)
        h = self.outnorm(h.transpose(0, 2, 1, 3))  # (B, S, DI)
        h = (h + self.learnable_skip[...].astype(h.dtype) * x_conv) * jax.nn.silu(z)
        return self.proj_down(h), mLSTMPaperState(cell_state, conv_state)
