"""Autoregressive sampling: prefill the prompt with the sequence kernel (returning the recurrent
states), then O(1)-memory recurrent steps in a ``lax.scan``, all under one ``jax.jit``.

    tokens = generate(model, prompt, max_new_tokens, key=key, temperature=1.0, top_k=None)
    # prompt int (B, S0) -> int32 (B, S0 + max_new_tokens); temperature 0 = greedy (argmax)
"""
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx


def sample_token(logits: jax.Array, key: jax.Array, temperature: float, top_k: int | None) -> jax.Array:
    """logits (B, V) -> int32 (B,): argmax for temperature 0, else a draw from softmax(logits / T)
    restricted to the ``top_k`` largest logits."""
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / temperature
    if top_k is not None:
        kth_largest = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth_largest, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


@partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "temperature", "top_k"))
def _generate(graphdef, params, prompt, key, *, max_new_tokens, temperature, top_k):
    model = nnx.merge(graphdef, params)
    logits, state = model(prompt, return_state=True)
    keys = jax.random.split(key, max_new_tokens)
    first = sample_token(logits[:, -1], keys[0], temperature, top_k)

    def step(carry, step_key):
        token, state = carry
        logits, state = model.step(token, state)
        token = sample_token(logits, step_key, temperature, top_k)
        return (token, state), token

    _, rest = jax.lax.scan(step, (first, state), keys[1:])
    return jnp.concatenate([prompt.astype(jnp.int32), first[:, None], rest.T], axis=1)


def generate(model: nnx.Module, prompt: jax.Array, max_new_tokens: int, *, key: jax.Array,
             temperature: float = 1.0, top_k: int | None = None) -> jax.Array:
    """Samples ``max_new_tokens`` tokens after ``prompt`` (int (B, S0), S0 >= 1) from ``model``
    (an :class:`xlstm_flax.xLSTMLMModel`); returns int32 (B, S0 + max_new_tokens)."""
    prompt = jnp.asarray(prompt)
    if prompt.ndim != 2 or prompt.shape[1] < 1 or not jnp.issubdtype(prompt.dtype, jnp.integer):
        raise ValueError(f"prompt must be an integer array (B, S0) with S0 >= 1, got "
                         f"{prompt.dtype} {tuple(prompt.shape)}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    vocab_size = model.config.vocab_size
    if top_k is not None and not 1 <= top_k <= vocab_size:
        raise ValueError(f"top_k must be in [1, vocab_size={vocab_size}] or None, got {top_k}")
    if max_new_tokens == 0:
        return prompt.astype(jnp.int32)
    graphdef, params = nnx.split(model)
    return _generate(graphdef, params, prompt, key, max_new_tokens=max_new_tokens,
                     temperature=float(temperature), top_k=top_k)
