"""Model FLOPs per token (for tokens/s -> MFU) and the dense bf16 peak of the card.

Counted: multiply-adds of matmuls as 2 FLOPs; elementwise work (norms, gates, exp, soft caps) is not.

- Parameter part: 2N per token forward, 6N forward + backward, where N is every parameter a token
  touches: all parameters except the embedding table (a lookup), plus the LM head's V x D (the
  embedding matrix again when tied). sLSTM recurrent weights and conv taps are parameters, so
  their matmuls are inside 2N.
- mLSTM recurrence (not parameters): per head and token, chunkwise with chunk L (``mlstm.chunk_size``
  or the kernels' default for the sequence length, ``kernels.common.default_chunk_size``):

      intra-chunk   (DHQK + DHV) * L        q k^T and (D * q k^T) v over the causal half, L / 2 keys
      inter-chunk   2 * DHQK * DHV + 2 * DHQK   C_prev^T q and n_prev . q
      chunk states  2 * DHQK * DHV + 2 * DHQK   sum_j k_j v_j^T and sum_j k_j, L tokens per update

  times heads and mLSTM blocks. The backward is counted as twice the forward (training = 3x).
- Rematerialisation (``remat``) recomputes the forward; that work is not counted (MFU convention).
"""

import jax
from flax import nnx

from xlstm_flax.kernels.common import default_chunk_size

from .model import xLSTMLMModel
from .model_config import xLSTMLMConfig

# Dense bf16 tensor-core peak (no sparsity) by a substring of ``device_kind``; the first match wins.
PEAK_BF16_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("A100", 312e12),
)


def param_count_per_token(config: xLSTMLMConfig) -> int:
    """N: parameters a token touches (all but the embedding table, plus the V x D LM head)."""
    abstract = nnx.eval_shape(lambda: xLSTMLMModel(config, rngs=nnx.Rngs(0)))
    total = sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    tied_head = config.vocab_size * config.embedding_dim if config.tie_embeddings else 0
    return total - abstract.embedding.embedding.size + tied_head


def mlstm_head_dims(config: xLSTMLMConfig) -> tuple[int, int]:
    """(DHQK, DHV) of one mLSTM head of ``config``."""
    m, dim = config.mlstm, config.embedding_dim
    if m.variant == "paper":
        dh = m.inner_dim(dim) // m.num_heads
        return dh, dh
    return m.qk_dim(dim) // m.num_heads, m.v_dim(dim) // m.num_heads


def mlstm_forward_flops_per_token(config: xLSTMLMConfig, seq_len: int) -> float:
    """Forward FLOPs of the mLSTM recurrence per token (all heads, all mLSTM blocks), see module doc."""
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    blocks = config.block_kinds().count("mlstm")
    if blocks == 0:
        return 0.0
    dhqk, dhv = mlstm_head_dims(config)
    chunk = config.mlstm.chunk_size or default_chunk_size(seq_len)
    per_head = (dhqk + dhv) * chunk + 2 * (2 * dhqk * dhv + 2 * dhqk)
    return float(per_head * config.mlstm.num_heads * blocks)


def forward_flops_per_token(config: xLSTMLMConfig, seq_len: int, *, logits_at_every_position: bool = True) -> float:
    """Forward (prefill) FLOPs per token of a length-``seq_len`` sequence: 2N + the mLSTM recurrence.
    ``logits_at_every_position`` False: the LM head runs at the last position only (generate's prefill)."""
    n = param_count_per_token(config)
    if not logits_at_every_position:
        head = config.vocab_size * config.embedding_dim
        n -= head * (1 - 1 / seq_len)
    return 2.0 * n + mlstm_forward_flops_per_token(config, seq_len)


def train_flops_per_token(config: xLSTMLMConfig, seq_len: int) -> float:
    """Forward + backward FLOPs per trained token: 6N + 3 x the mLSTM recurrence's forward."""
    return 6.0 * param_count_per_token(config) + 3.0 * mlstm_forward_flops_per_token(config, seq_len)


def peak_flops_per_second(device=None) -> float | None:
    """Dense bf16 peak FLOP/s of ``device`` (default: the first JAX device), None on CPU or an unknown card."""
    device = jax.devices()[0] if device is None else device
    if device.platform != "gpu":
        return None
    kind = device.device_kind
    return next((peak for name, peak in PEAK_BF16_FLOPS if name in kind), None)
