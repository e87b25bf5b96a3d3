"""Autoregressive sampling: prefill the prompts with the sequence kernel (returning the recurrent
states; logits at the last prompt position only), then O(1)-memory recurrent steps in a ``lax.scan``,
all under one ``jax.jit``.

    out = generate(model, prompts, max_new_tokens, key=key, temperature=1.0, top_k=None, top_p=None,
                   eos_id=None)
    # prompts: int (B, S0), or a list of B token lists of any lengths (ragged), or (B, S0) plus
    # prompt_lengths (B,) for left-aligned padded prompts; temperature 0 = greedy (argmax)
    # out.tokens int32 (B, max_new_tokens) new tokens (eos_id after a row's end), out.lengths int32 (B,)

Ragged prompts are right-aligned to the longest one; the padding in front of a row is a segment of
its own (``segment_ids``), so every layer restarts from its zero state where the prompt begins: a
row's state after the prefill, hence its output, is that of the row generated alone. Sampling draws
row b's token at step t with ``fold_in(row_key[b], t)``: a row's draws depend on its key only.
"""

import inspect
import math
import numbers
from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .config import is_int

PAD_ID = 0  # token in front of shorter prompts (its segment is discarded)
# Decoding runs at least this many rows (a one-row batch as two copies of its row): XLA's GPU compiler
# rewrites a one-row matmul whose weight has < 10M elements into a broadcast multiply + reduce, which ran
# the 7B q/k/gate projections at about a quarter of the GEMV's speed (benchmarks/results/
# h200_profiles_2026-12-03.md). With two rows the projections stay GEMMs. Padding each one-row matmul
# inside the layers instead (one-row state) was slower: 4.67 against 4.56 ms per 7B token (benchmarks/
# results/h200_session12_2026-12-03.md). With the decode projections joined (layers/projections.py) one row
# is still slower: 5.05 against 4.13-4.35 ms, gates as a GEMM in both (h200_session17_2026-12-04.md).
MIN_DECODE_ROWS = 2
MAX_NEW_TOKENS = 2**31 - 1  # the scan counts positions in int32


class Generation(NamedTuple):
    tokens: jax.Array  # int32 (B, max_new_tokens): new tokens, ``eos_id`` after a row's end
    lengths: jax.Array  # int32 (B,): new tokens per row, its EOS included


def sample_token(logits: jax.Array, keys: jax.Array, temperature, top_k: int | None, top_p=1.0) -> jax.Array:
    """logits (B, V), keys (B,) -> int32 (B,): argmax for temperature 0, else a draw from
    softmax(logits / T) restricted to the ``top_k`` largest logits and then to the smallest set of
    tokens whose probability reaches ``top_p`` (nucleus; 1 keeps all). ``temperature`` and ``top_p``
    may be traced scalars (one compilation serves all their values)."""

    def draw(logits):
        logits = logits.astype(jnp.float32) / temperature
        if top_k is not None:
            kth_largest = jax.lax.top_k(logits, top_k)[0][..., -1:]
            logits = jnp.where(logits < kth_largest, -jnp.inf, logits)
        logits = jax.lax.cond(top_p < 1.0, _nucleus, lambda logits, _: logits, logits, top_p)
        return jax.vmap(jax.random.categorical)(keys, logits).astype(jnp.int32)

    def greedy(logits):
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)

    return jax.lax.cond(temperature > 0, draw, greedy, logits)


def _nucleus(logits: jax.Array, top_p) -> jax.Array:
    """logits (B, V) with all but the most likely tokens whose mass before them is < top_p at -inf."""
    descending = -jnp.sort(-logits, axis=-1)
    probs = jax.nn.softmax(descending, axis=-1)
    keep = jnp.cumsum(probs, axis=-1) - probs < top_p
    smallest_kept = jnp.min(jnp.where(keep, descending, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits < smallest_kept, -jnp.inf, logits)


# XLA may otherwise drop a rounding to a 16-bit dtype that is converted back to fp32 (its default "excess
# precision"): decoding then computed each layer's gate pre-activations from the unrounded normed input and
# spent one kernel per layer writing that fp32 copy beside the 16-bit one the projections read. Without
# it the step takes one kernel less per layer and computes the gates from the values the projections see,
# as the prefill does: 512 instead of 544 launches per 7B token, 3.99-4.00 against 4.02-4.23 ms (H200,
# benchmarks/results/h200_session19_2026-12-04.md).
GENERATION_COMPILER_OPTIONS = {"xla_allow_excess_precision": False}


@partial(
    jax.jit,
    static_argnames=("graphdef", "max_new_tokens", "top_k", "callback"),
    compiler_options=GENERATION_COMPILER_OPTIONS,
)
def generation_program(
    graphdef, params, prompt, segment_ids, row_keys, temperature, top_p, eos_id, *, max_new_tokens, top_k, callback
):
    """The jitted program behind :func:`generate` (arguments from :func:`generation_inputs`), to lower,
    compile or time alone. eos_id: int32 scalar, -1 for none."""
    model = nnx.merge(graphdef, params)
    x, state = model.features(prompt, segment_ids=segment_ids, return_state=True)
    logits = model.head(x[:, -1])  # (B, V): the prompt's last position only, never (B, S0, V)

    def sample(logits, t, done, keys):
        keys = jax.vmap(jax.random.fold_in, (0, None))(keys, t)
        token = jnp.where(done, eos_id, sample_token(logits, keys, temperature, top_k, top_p))
        if callback is not None:
            jax.debug.callback(callback, token[:rows], ~done[:rows], ordered=True)
        return token, done | (token == eos_id)

    rows = prompt.shape[0]
    first, done = sample(logits, 0, jnp.zeros(rows, bool), row_keys)
    if rows < MIN_DECODE_ROWS:  # decode copies of the rows (the extra ones are dropped at the end)
        first, done, row_keys, state = _repeat_rows(model, MIN_DECODE_ROWS, first, done, row_keys, state=state)

    def step(carry, t):
        token, done, state = carry
        active = ~done  # the token drawn now belongs to the row's output
        logits, state = model.step(token, state)
        token, done = sample(logits, t, done, row_keys)
        return (token, done, state), (token, active)

    _, (rest, active) = jax.lax.scan(step, (first, done, state), jnp.arange(1, max_new_tokens))
    tokens = jnp.concatenate([first[:rows, None], rest[:, :rows].T], axis=1)
    lengths = 1 + active[:, :rows].sum(axis=0, dtype=jnp.int32)
    return Generation(tokens, lengths)


def _repeat_rows(model, copies: int, *arrays, state):
    """``arrays`` (batch on axis 0) and the model ``state`` with every row repeated ``copies`` times; a
    state leaf's batch axis is where ``init_state(1)`` and ``init_state(2)`` differ in shape."""
    one, two = (jax.eval_shape(partial(model.init_state, b)) for b in (1, 2))
    state_axes = jax.tree.map(lambda a, b: [x != y for x, y in zip(a.shape, b.shape)].index(True), one, two)
    state = jax.tree.map(lambda x, axis: jnp.repeat(x, copies, axis=axis), state, state_axes)
    return *(jnp.repeat(x, copies, axis=0) for x in arrays), state


def generate(
    model: nnx.Module,
    prompts,
    max_new_tokens: int,
    *,
    key: jax.Array,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    prompt_lengths=None,
    callback: Callable[[np.ndarray, np.ndarray], None] | None = None,
) -> Generation:
    """Samples up to ``max_new_tokens`` tokens after each prompt from ``model`` (an
    :class:`xlstm_flax.xLSTMLMModel`).

    ``prompts``: int (B, S0), or B token lists of any lengths >= 1, or int (B, S0) holding row b's
    prompt in its first ``prompt_lengths[b]`` positions. ``key``: one PRNG key (split into B row keys)
    or B keys, one per row. A row ends after it produced ``eos_id`` (if given). ``callback(tokens,
    active)`` runs on the host after each step with that step's int32 (B,) tokens and bool (B,)
    ``active`` (the token belongs to the row's output), in order. Returns :class:`Generation`.
    """
    args, static = _program_inputs(
        model, prompts, max_new_tokens, key, temperature, top_k, top_p, eos_id, prompt_lengths, callback
    )
    if max_new_tokens == 0:
        batch = args[2].shape[0]
        return Generation(jnp.zeros((batch, 0), jnp.int32), jnp.zeros(batch, jnp.int32))
    return generation_program(*args, **static)


def generation_inputs(model: nnx.Module, prompts, max_new_tokens: int, **options) -> tuple[tuple, dict]:
    """``(args, static)`` such that ``generation_program(*args, **static)`` is what ``generate(model,
    prompts, max_new_tokens, **options)`` runs (for ``max_new_tokens`` >= 1); checks them as generate does."""
    bound = inspect.signature(generate).bind(model, prompts, max_new_tokens, **options)
    bound.apply_defaults()
    return _program_inputs(**bound.arguments)


def _program_inputs(model, prompts, max_new_tokens, key, temperature, top_k, top_p, eos_id, prompt_lengths, callback):
    """generate's arguments checked and laid out as :func:`generation_program` takes them."""
    vocab_size = model.config.vocab_size
    prompt, lengths = _padded_prompts(prompts, prompt_lengths, vocab_size)
    row_keys = _row_keys(key, len(lengths))
    _check_sampling(max_new_tokens, temperature, top_k, top_p, eos_id, vocab_size)
    if callback is not None and not callable(callback):
        raise ValueError(f"callback must be callable (tokens, active) -> None, got {callback!r}")
    segment_ids = None  # right-aligned: the prompt of row b is segment 1 after a padding segment 0
    if (lengths < prompt.shape[1]).any():
        segment_ids = jnp.asarray(np.arange(prompt.shape[1]) >= prompt.shape[1] - lengths[:, None], jnp.int32)
    graphdef, params = nnx.split(model)
    args = (
        graphdef,
        params,
        jnp.asarray(prompt),
        segment_ids,
        row_keys,
        jnp.float32(temperature),
        jnp.float32(1.0 if top_p is None else top_p),
        jnp.int32(-1 if eos_id is None else eos_id),
    )
    return args, dict(max_new_tokens=max_new_tokens, top_k=top_k, callback=callback)


def _padded_prompts(prompts, prompt_lengths, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The prompts right-aligned in int32 (B, max length) and their lengths (B,); checks them."""
    if isinstance(prompts, (list, tuple)):
        if prompt_lengths is not None:
            raise ValueError("prompt_lengths goes with a padded prompt array, not with a list of prompts")
        rows = [np.asarray(p) for p in prompts]
        if not rows or any(r.ndim != 1 or not np.issubdtype(r.dtype, np.integer) for r in rows if r.size):
            raise ValueError("prompts must be a non-empty list of 1-D integer token lists")
    else:
        array = np.asarray(prompts)
        if array.ndim != 2 or array.shape[0] < 1 or not np.issubdtype(array.dtype, np.integer):
            raise ValueError(
                f"prompt must be an integer array (B, S0) or a list of token lists, got {array.dtype} {array.shape}"
            )
        lengths = np.full(array.shape[0], array.shape[1]) if prompt_lengths is None else np.asarray(prompt_lengths)
        if (
            lengths.shape != array.shape[:1]
            or not np.issubdtype(lengths.dtype, np.integer)
            or (lengths > array.shape[1]).any()
            or (lengths < 1).any()
        ):
            raise ValueError(
                f"prompt_lengths must be {array.shape[0]} integers in [1, {array.shape[1]}], got {lengths.tolist()}"
            )
        rows = [row[:n] for row, n in zip(array, lengths)]
    for b, row in enumerate(rows):
        if row.size == 0:
            raise ValueError(f"prompt {b} is empty (a prompt needs >= 1 token, e.g. the EOS id)")
        if row.min() < 0 or row.max() >= vocab_size:
            bad = row.max() if row.max() >= vocab_size else row.min()
            raise ValueError(f"prompt {b} holds token id {bad}, outside the vocabulary [0, {vocab_size})")
    lengths = np.array([row.size for row in rows])
    padded = np.full((len(rows), lengths.max()), PAD_ID, np.int32)
    for b, row in enumerate(rows):
        padded[b, padded.shape[1] - row.size :] = row
    return padded, lengths


def _row_keys(key: jax.Array, batch: int) -> jax.Array:
    """One typed PRNG key per row: ``key`` split, or ``key`` itself when it already holds B keys."""
    if not isinstance(key, jax.Array) or not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        kind = key.dtype if isinstance(key, jax.Array) else type(key).__name__
        raise ValueError(f"key must be a jax.random.key (new-style typed key), got {kind}")
    if key.shape == ():
        return jax.random.split(key, batch)
    if key.shape != (batch,):
        raise ValueError(f"key must be one key or {batch} keys (one per row), got shape {key.shape}")
    return key


def _check_sampling(max_new_tokens, temperature, top_k, top_p, eos_id, vocab_size: int) -> None:
    if not is_int(max_new_tokens) or not 0 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise ValueError(f"max_new_tokens must be an int in [0, 2**31 - 1] (int32 positions), got {max_new_tokens!r}")
    if not _is_real(temperature) or not temperature >= 0 or math.isinf(temperature):
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and not (is_int(top_k) and 1 <= top_k <= vocab_size):
        raise ValueError(f"top_k must be an int in [1, vocab_size={vocab_size}] or None, got {top_k!r}")
    if top_p is not None and not (_is_real(top_p) and 0.0 < top_p <= 1.0):
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p!r}")
    if eos_id is not None and not (is_int(eos_id) and 0 <= eos_id < vocab_size):
        raise ValueError(f"eos_id must be an int in [0, vocab_size={vocab_size}) or None, got {eos_id!r}")


def _is_real(x) -> bool:
    """A real number: Python, numpy, or a 0-d (numpy or JAX) array of a real dtype."""
    if isinstance(x, bool):
        return False
    if isinstance(x, (np.ndarray, jax.Array)):
        return x.ndim == 0 and (jnp.issubdtype(x.dtype, jnp.floating) or jnp.issubdtype(x.dtype, jnp.integer))
    return isinstance(x, numbers.Real)
