"""xLSTM language model: embedding -> block stack -> final norm -> LM head (optional tying, soft-cap).

    model = xLSTMLMModel(config, rngs=nnx.Rngs(0))
    logits = model(tokens)                                  # int (B, S) -> float32 (B, S, V)
    logits, state = model(tokens, state, return_state=True)  # carry the recurrent state
    state = model.init_state(batch_size)
    logits, state = model.step(token, state)                # int (B,) -> float32 (B, V)

Precision: parameters in ``param_dtype`` (fp32), matmuls in ``compute_dtype``; gate pre-activations,
norm statistics, recurrent states and logits in fp32.
"""
import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from .blocks import xLSTMBlockStack
from .layers import FFNConfig, make_norm, mLSTMLayerConfig, sLSTMLayerConfig
from .layers.init import dense, small_init, soft_cap
from .layers.norms import NORM_KINDS

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def _require(ok: bool, field: str, message: str) -> None:
    if not ok:
        raise ValueError(f"xLSTMLMConfig.{field}: {message}")


@dataclasses.dataclass(frozen=True)
class xLSTMLMConfig:
    """The whole model. Blocks are mLSTM blocks except at the indices in ``slstm_at``."""

    vocab_size: int = 50304
    embedding_dim: int = 768
    num_blocks: int = 12
    slstm_at: tuple[int, ...] = ()
    mlstm: mLSTMLayerConfig = dataclasses.field(default_factory=mLSTMLayerConfig)
    slstm: sLSTMLayerConfig = dataclasses.field(default_factory=sLSTMLayerConfig)
    ffn: FFNConfig = dataclasses.field(default_factory=FFNConfig)
    norm: str = "rmsnorm"  # "rmsnorm" | "layernorm" (block and output norms)
    norm_eps: float = 1e-6
    norm_bias: bool = False  # additive bias in the block norms (HF's use_bias; never in the output norm)
    add_out_norm: bool = True
    tie_embeddings: bool = False
    logit_soft_cap: float | None = 30.0
    compute_dtype: str = "float32"  # "float32" | "bfloat16" | "float16"
    param_dtype: str = "float32"
    remat: bool = False  # rematerialise each block in the backward pass
    scan_layers: bool = False  # stack identical blocks and run them with nnx.scan

    def __post_init__(self):
        for name in ("vocab_size", "embedding_dim", "num_blocks"):
            _require(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        bad = [i for i in self.slstm_at if not 0 <= i < self.num_blocks]
        _require(not bad, "slstm_at", f"indices {bad} out of range for num_blocks={self.num_blocks}")
        _require(len(set(self.slstm_at)) == len(self.slstm_at), "slstm_at",
                 f"has repeated indices: {self.slstm_at}")
        _require(self.norm in NORM_KINDS, "norm", f"must be one of {NORM_KINDS}, got {self.norm!r}")
        _require(self.norm_eps >= 0, "norm_eps", f"must be >= 0, got {self.norm_eps}")
        _require(self.logit_soft_cap is None or self.logit_soft_cap > 0, "logit_soft_cap",
                 f"must be > 0 or null, got {self.logit_soft_cap}")
        for name in ("compute_dtype", "param_dtype"):
            _require(getattr(self, name) in DTYPES, name,
                     f"must be one of {tuple(DTYPES)}, got {getattr(self, name)!r}")
        _require(not (self.scan_layers and 0 < len(self.slstm_at) < self.num_blocks), "scan_layers",
                 "needs identical blocks, but slstm_at mixes sLSTM and mLSTM blocks; set "
                 "scan_layers: false or make slstm_at empty")
        if len(self.slstm_at) < self.num_blocks:
            self.mlstm.check_width(self.embedding_dim, "xLSTMLMConfig")
        if self.slstm_at:
            self.slstm.check_width(self.embedding_dim, "xLSTMLMConfig")

    def block_kinds(self) -> tuple[str, ...]:
        """"mlstm" or "slstm" for each block position."""
        return tuple("slstm" if i in self.slstm_at else "mlstm" for i in range(self.num_blocks))

    def with_kernel(self, kernel: str) -> "xLSTMLMConfig":
        """The same model with another mLSTM sequence kernel (same parameters, same outputs)."""
        return dataclasses.replace(self, mlstm=dataclasses.replace(self.mlstm, kernel=kernel))

    @property
    def jnp_compute_dtype(self):
        return DTYPES[self.compute_dtype]

    @property
    def jnp_param_dtype(self):
        return DTYPES[self.param_dtype]


def _check_tokens(tokens: jax.Array, rank: int, name: str) -> None:
    if tokens.ndim != rank or not jnp.issubdtype(tokens.dtype, jnp.integer):
        expected = "(B, S)" if rank == 2 else "(B,)"
        raise ValueError(f"{name} must be an integer array of shape {expected}, got "
                         f"{tokens.dtype} {tuple(tokens.shape)}")


class xLSTMLMModel(nnx.Module):
    """Parameters: embedding, blocks, out_norm (optional), lm_head (absent with tied embeddings)."""

    def __init__(self, config: xLSTMLMConfig, *, rngs: nnx.Rngs):
        if not isinstance(config, xLSTMLMConfig):
            raise TypeError(f"config must be an xLSTMLMConfig, got {type(config).__name__}")
        self.config = config
        dim, cdt, pdt = config.embedding_dim, config.jnp_compute_dtype, config.jnp_param_dtype
        self.embedding = nnx.Embed(config.vocab_size, dim, dtype=cdt, param_dtype=pdt,
                                   embedding_init=small_init(dim), rngs=rngs)
        self.blocks = xLSTMBlockStack(config, rngs=rngs)
        self.out_norm = (make_norm(config.norm, dim, eps=config.norm_eps, param_dtype=pdt)
                         if config.add_out_norm else None)
        self.lm_head = (None if config.tie_embeddings else
                        dense(dim, config.vocab_size, kernel_init=small_init(dim), use_bias=False,
                              dtype=cdt, param_dtype=pdt, rngs=rngs))

    def init_state(self, batch_size: int):
        """The recurrent state before the first token, for :meth:`step` or a chunked ``__call__``."""
        return self.blocks.init_state(batch_size)

    def __call__(self, tokens: jax.Array, state=None, *, return_state: bool = False):
        """tokens int (B, S) -> logits float32 (B, S, V) [, state after the last token]."""
        _check_tokens(tokens, 2, "tokens")
        x, state = self.blocks(self.embedding(tokens), state, return_state=return_state)
        logits = self._head(x)
        return (logits, state) if return_state else logits

    def step(self, token: jax.Array, state):
        """One token per sequence: token int (B,) -> (logits float32 (B, V), new state)."""
        _check_tokens(token, 1, "token")
        x, state = self.blocks.step(self.embedding(token), state)
        return self._head(x), state

    def _head(self, x: jax.Array) -> jax.Array:
        if self.out_norm is not None:
            x = self.out_norm(x)
        logits = self.embedding.attend(x) if self.lm_head is None else self.lm_head(x)
        return soft_cap(logits.astype(jnp.float32), self.config.logit_soft_cap)
