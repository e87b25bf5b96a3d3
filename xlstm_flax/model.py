"""xLSTM language model: embedding -> block stack -> final norm -> LM head (optional tying, soft-cap).

    model = xLSTMLMModel(config, rngs=nnx.Rngs(0))
    logits = model(tokens)                                  # int (B, S) -> float32 (B, S, V)
    logits = model(tokens, segment_ids=segment_ids)         # packed documents: int (B, S) ids
    logits, state = model(tokens, state, return_state=True)  # carry the recurrent state
    x = model.features(tokens); logits = model.head(x[:, -1])  # logits where they are needed only
    raw = model.uncapped_logits(x)                          # compute dtype, before the soft cap (the chunked loss)
    state = model.init_state(batch_size)
    logits, state = model.step(token, state)                # int (B,) -> float32 (B, V)

Precision: parameters in ``param_dtype`` (fp32), matmuls in ``compute_dtype``; gate pre-activations,
norm statistics, recurrent states and logits in fp32.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .blocks import xLSTMBlockStack
from .config import is_int
from .layers import make_norm
from .layers.init import dense, small_init, soft_cap
from .model_config import xLSTMLMConfig
from .sharding import partitioned

__all__ = ["xLSTMLMConfig", "xLSTMLMModel"]


def _check_tokens(tokens: jax.Array, rank: int, name: str, vocab_size: int | None = None) -> None:
    """A non-empty integer array of ``rank``; with ``vocab_size``, ids in [0, vocab_size) where the values
    are known (not under jit: there an id outside reads a NaN embedding row)."""
    if tokens.ndim != rank or not jnp.issubdtype(tokens.dtype, jnp.integer) or 0 in tokens.shape:
        expected = "(B, S)" if rank == 2 else "(B,)"
        raise ValueError(
            f"{name} must be a non-empty integer array of shape {expected}, got {tokens.dtype} {tuple(tokens.shape)}"
        )
    if vocab_size is not None and not isinstance(tokens, jax.core.Tracer):
        values = np.asarray(tokens)  # concrete, also when a jitted function closes over it
        low, high = int(values.min()), int(values.max())
        if low < 0 or high >= vocab_size:
            raise ValueError(f"{name} holds ids from {low} to {high}, outside [0, {vocab_size}) (the vocabulary)")


class xLSTMLMModel(nnx.Module):
    """Parameters: embedding, blocks, out_norm (optional), lm_head (absent with tied embeddings)."""

    def __init__(self, config: xLSTMLMConfig, *, rngs: nnx.Rngs):
        if not isinstance(config, xLSTMLMConfig):
            raise TypeError(f"config must be an xLSTMLMConfig, got {type(config).__name__}")
        self.config = config
        dim, cdt, pdt = config.embedding_dim, config.jnp_compute_dtype, config.jnp_param_dtype
        self.embedding = nnx.Embed(
            config.vocab_size,
            dim,
            dtype=cdt,
            param_dtype=pdt,
            embedding_init=partitioned(small_init(dim), "vocab", "embed"),
            rngs=rngs,
        )
        self.blocks = xLSTMBlockStack(config, rngs=rngs)
        self.out_norm = (
            make_norm(config.norm, dim, eps=config.norm_eps, param_dtype=pdt) if config.add_out_norm else None
        )
        self.lm_head = (
            None
            if config.tie_embeddings
            else dense(
                dim,
                config.vocab_size,
                axes=("embed", "vocab"),
                kernel_init=small_init(dim),
                use_bias=False,
                dtype=cdt,
                param_dtype=pdt,
                rngs=rngs,
            )
        )

    def init_state(self, batch_size: int):
        """The recurrent state before the first token, for :meth:`step` or a chunked ``__call__``."""
        if not is_int(batch_size) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        return self.blocks.init_state(batch_size)

    def __call__(
        self, tokens: jax.Array, state=None, *, segment_ids: jax.Array | None = None, return_state: bool = False
    ):
        """tokens int (B, S) -> logits float32 (B, S, V) [, state after the last token].

        ``segment_ids`` int (B, S) or None (one document per row): a new document starts where the id
        changes from the previous position; there every layer restarts from its zero state, as if the
        document were a row of its own. ``state`` (e.g. from an earlier call) applies to the first
        document of each row only."""
        if return_state:
            x, state = self.features(tokens, state, segment_ids=segment_ids, return_state=True)
            return self.head(x), state
        return self.head(self.features(tokens, state, segment_ids=segment_ids))

    def features(
        self, tokens: jax.Array, state=None, *, segment_ids: jax.Array | None = None, return_state: bool = False
    ):
        """tokens int (B, S) -> hidden states (B, S, D) before the head [, state]: what :meth:`head` maps
        to logits, for callers that need logits at a few positions only (prefill, chunked loss)."""
        _check_tokens(tokens, 2, "tokens", self.config.vocab_size)
        if segment_ids is not None:
            _check_tokens(segment_ids, 2, "segment_ids")
            if segment_ids.shape != tokens.shape:
                raise ValueError(
                    f"segment_ids shape {tuple(segment_ids.shape)} differs from tokens shape {tuple(tokens.shape)}"
                )
        x, state = self.blocks(self.embedding(tokens), state, return_state=return_state, segment_ids=segment_ids)
        return (x, state) if return_state else x

    def step(self, token: jax.Array, state):
        """One token per sequence: token int (B,) -> (logits float32 (B, V), new state)."""
        _check_tokens(token, 1, "token", self.config.vocab_size)
        x, state = self.blocks.step(self.embedding(token), state)
        return self.head(x), state

    def head(self, x: jax.Array) -> jax.Array:
        """Hidden states (..., D) -> logits float32 (..., V): final norm, LM head, soft cap."""
        return soft_cap(self.uncapped_logits(x).astype(jnp.float32), self.config.logit_soft_cap)

    def uncapped_logits(self, x: jax.Array) -> jax.Array:
        """Hidden states (..., D) -> logits (..., V) in the compute dtype before the soft cap: final norm,
        LM head (what the chunked loss takes, applying ``config.logit_soft_cap`` itself)."""
        if self.out_norm is not None:
            x = self.out_norm(x)
        return self.embedding.attend(x) if self.lm_head is None else self.lm_head(x)
