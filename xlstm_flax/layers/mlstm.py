"""The xLSTM-7B mLSTM layer (same parameters and math as HF transformers' ``xLSTMForCausalLM``).

x (B, S, D) -> q, k (B, NH, S, DHQK), v (B, NH, S, DHV), output gate (B, S, NH * DHV), input and
forget gate pre-activations (B, NH, S) in fp32, soft-capped -> mLSTM kernel -> per-head norm
-> h * sigmoid(o) -> out_proj -> (B, S, D).
"""

import jax
import jax.numpy as jnp
from flax import nnx

from .config import mLSTMLayerConfig
from .init import dense, gate_projections, small_init, soft_cap, wang_init
from .mlstm_cell import mLSTMMixer, mLSTMState, zero_state
from .norms import MultiHeadNorm
from .projections import project


class mLSTMLayer(mLSTMMixer):
    """Parameters (names as in the HF checkpoint): q, k, v, ogate_preact, igate_preact, fgate_preact,
    multihead_norm, out_proj. State: :class:`mLSTMState`."""

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
        qk_dim, v_dim = config.qk_dim(dim), config.v_dim(dim)
        self.dhqk, self.dhv = qk_dim // nh, v_dim // nh
        proj = dict(use_bias=config.use_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        column = dict(axes=("embed", "heads"), kernel_init=small_init(dim), **proj)  # head-major outputs
        self.q = dense(dim, qk_dim, **column)
        self.k = dense(dim, qk_dim, **column)
        self.v = dense(dim, v_dim, **column)
        self.ogate_preact = dense(dim, v_dim, **column)
        self.igate_preact, self.fgate_preact = gate_projections(
            dim, config, in_axis="embed", param_dtype=param_dtype, rngs=rngs
        )
        self.multihead_norm = MultiHeadNorm(
            nh, self.dhv, eps=config.norm_eps, use_bias=config.use_bias, param_dtype=param_dtype
        )
        self.out_proj = dense(v_dim, dim, axes=("heads", "embed"), kernel_init=wang_init(dim, num_blocks), **proj)

    def init_state(self, batch_size: int) -> mLSTMState:
        return zero_state(batch_size, self.num_heads, self.dhqk, self.dhv)

    def _forward(self, x, cell, state, segment_ids):
        del segment_ids  # no state besides the cell's
        B, S, _ = x.shape

        def heads(t):  # (B, S, NH * DH) -> (B, NH, S, DH)
            return t.reshape(B, S, self.num_heads, -1).transpose(0, 2, 1, 3)

        def gate(preact):  # fp32 pre-activation (B, S, NH) -> soft-capped (B, NH, S)
            return soft_cap(preact, self.config.gate_soft_cap).transpose(0, 2, 1)

        q, k, v, o, i, f = project(x, self.q, self.k, self.v, self.ogate_preact, self.igate_preact, self.fgate_preact)
        h, new_state = cell(heads(q), heads(k), heads(v), gate(i), gate(f), state)
        h = self.multihead_norm(h.transpose(0, 2, 1, 3))  # (B, S, NH * DHV)
        return self.out_proj(jax.nn.sigmoid(o) * h), new_state
