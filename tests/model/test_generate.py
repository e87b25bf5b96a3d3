"""generate(): greedy decoding equals the argmax of full-sequence logits (teacher forcing), so do the
draws of greedy and seeded sampling from a last-logit-only prefill, top-k and
top-p sampling stay inside their sets, ragged batches equal rows generated alone (greedy and seeded
sampling, list and padded-array forms), a one-row batch (decoded as two copies) with stacked states,
per-row EOS stops with lengths, the streaming callback, and argument errors before any work. Token
comparisons are exact (same tokens)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from xlstm_flax.inference import sample_text
from xlstm_flax.sampling import generate, sample_token
from xlstm_flax.train.data import ByteTokenizer

from .helpers import VOCAB, make_model, random_tokens, small_config

PROMPT_LEN, NEW = 5, 7
RAGGED_LENGTHS = (2, 6, 2)  # rows 0 and 2 alone share a compilation


@pytest.fixture(scope="module")
def model():
    return make_model(small_config("paper", kernel="chunkwise--jax"))


@pytest.fixture(scope="module")
def prompt():
    return random_tokens(5, 2, PROMPT_LEN)


@pytest.fixture(scope="module")
def ragged():
    rows = random_tokens(6, len(RAGGED_LENGTHS), max(RAGGED_LENGTHS))
    return [np.asarray(row[:n]).tolist() for row, n in zip(rows, RAGGED_LENGTHS)]


def test_greedy_generation_equals_argmax_of_full_sequence_logits(model, prompt):
    out = generate(model, prompt, NEW, key=jax.random.key(0), temperature=0.0)
    assert out.tokens.shape == (2, NEW) and out.tokens.dtype == jnp.int32
    np.testing.assert_array_equal(out.lengths, [NEW, NEW])
    logits = logits_of(model, jnp.concatenate([prompt, out.tokens], axis=1))
    # each generated token is the argmax of the logits of the whole sequence one position earlier
    np.testing.assert_array_equal(out.tokens, jnp.argmax(logits[:, PROMPT_LEN - 1 : -1], axis=-1))


@nnx.jit
def logits_of(model, tokens):
    return model(tokens)


def teacher_forced_logits(model, prompt, tokens):
    return logits_of(model, jnp.concatenate([prompt, tokens], axis=1))[:, PROMPT_LEN - 1 : -1]


def test_top_k_sampling_stays_in_the_top_k(model, prompt):
    k = 3
    out = generate(model, prompt, NEW, key=jax.random.key(1), temperature=1.0, top_k=k)
    top = jax.lax.top_k(teacher_forced_logits(model, prompt, out.tokens), k)[1]
    assert bool((top == out.tokens[..., None]).any(-1).all()), "a token outside the top k was drawn"
    different_key = generate(model, prompt, NEW, key=jax.random.key(2), temperature=1.0, top_k=k)
    assert not bool((different_key.tokens == out.tokens).all()), "sampling ignores the key"


def test_top_p_sampling_stays_in_the_nucleus(model, prompt):
    """Every drawn token is among the most likely tokens whose mass before it is < top_p; a tiny top_p
    keeps only the most likely token (= greedy); top_p 1 is plain sampling."""
    top_p = 0.6
    out = generate(model, prompt, NEW, key=jax.random.key(3), top_p=top_p)
    probs = jax.nn.softmax(teacher_forced_logits(model, prompt, out.tokens), axis=-1)
    drawn = jnp.take_along_axis(probs, out.tokens[..., None], axis=-1)
    mass_before = jnp.where(probs > drawn, probs, 0).sum(-1, keepdims=True)
    assert bool((mass_before < top_p).all()), "a token outside the nucleus was drawn"
    greedy = generate(model, prompt, NEW, key=jax.random.key(0), temperature=0.0)
    tiny = generate(model, prompt, NEW, key=jax.random.key(3), top_p=1e-6)
    np.testing.assert_array_equal(tiny.tokens, greedy.tokens)
    full = generate(model, prompt, NEW, key=jax.random.key(3), top_p=1.0)
    np.testing.assert_array_equal(full.tokens, generate(model, prompt, NEW, key=jax.random.key(3)).tokens)


def test_zero_new_tokens(model, prompt):
    out = generate(model, prompt, 0, key=jax.random.key(0))
    assert out.tokens.shape == (2, 0) and out.lengths.tolist() == [0, 0]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_ragged_batch_equals_rows_generated_alone(model, ragged, temperature):
    """Prompts of lengths 2, 6, 2 in one call (as a list, and as a left-aligned padded array plus
    lengths) give each row the tokens it gets alone with its own key."""
    keys = jax.random.split(jax.random.key(11), len(ragged))
    sampling = dict(temperature=temperature, top_p=0.9)
    batch = generate(model, ragged, NEW, key=keys, **sampling)
    padded = np.zeros((len(ragged), max(RAGGED_LENGTHS) + 2), np.int32)
    for b, row in enumerate(ragged):
        padded[b, : len(row)] = row
    from_array = generate(model, padded, NEW, key=keys, prompt_lengths=np.array(RAGGED_LENGTHS), **sampling)
    np.testing.assert_array_equal(from_array.tokens, batch.tokens)
    for b, row in enumerate(ragged):
        alone = generate(model, [row], NEW, key=keys[b : b + 1], **sampling)
        np.testing.assert_array_equal(batch.tokens[b], alone.tokens[0], err_msg=f"row {b} (length {len(row)})")


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_last_logit_prefill_draws_what_full_sequence_logits_draw(model, ragged, temperature):
    """generate's prefill takes logits at the last prompt position only; every token of a ragged batch
    (greedy and seeded sampling) is the draw that row b's key at step t makes from the full-sequence
    logits ``model(row)[:, -1]`` of the row alone, prompt plus the tokens before it."""
    key = jax.random.key(12)
    out = generate(model, ragged, NEW, key=key, temperature=temperature)
    row_keys = jax.random.split(key, len(ragged))
    for b, row in enumerate(ragged):
        tokens = jnp.concatenate([jnp.asarray(row, jnp.int32), out.tokens[b]])[None]
        logits = logits_of(model, tokens)[0, len(row) - 1 : -1]  # (NEW, V): the logits each token was drawn from
        step_keys = jax.vmap(jax.random.fold_in, (None, 0))(row_keys[b], jnp.arange(NEW))
        expected = sample_token(logits, step_keys, jnp.float32(temperature), None)
        np.testing.assert_array_equal(out.tokens[b], expected, err_msg=f"row {b} (length {len(row)})")


def test_rows_stop_at_eos_with_their_lengths(model, ragged):
    """eos_id = a token that row 0 produces at step 2: each row ends at its first EOS (length counts
    it, later positions hold eos_id); rows without it run to max_new_tokens."""
    free = generate(model, ragged, NEW, key=jax.random.key(0), temperature=0.0)
    eos_id = int(free.tokens[0, 2])
    out = generate(model, ragged, NEW, key=jax.random.key(0), temperature=0.0, eos_id=eos_id)
    for b in range(len(ragged)):
        hits = np.flatnonzero(np.asarray(free.tokens[b]) == eos_id)
        length = int(hits[0]) + 1 if hits.size else NEW
        assert int(out.lengths[b]) == length, b
        np.testing.assert_array_equal(out.tokens[b, :length], free.tokens[b, :length])
        assert bool((out.tokens[b, length:] == eos_id).all())
    assert int(out.lengths[0]) <= 3


def test_streaming_callback_sees_every_step_in_order(model, ragged):
    steps = []
    out = generate(
        model,
        ragged,
        NEW,
        key=jax.random.key(4),
        eos_id=3,
        callback=lambda tokens, active: steps.append((np.array(tokens), np.array(active))),
    )
    tokens, active = (np.stack(parts, axis=1) for parts in zip(*steps))
    np.testing.assert_array_equal(tokens, out.tokens)
    np.testing.assert_array_equal(active.sum(axis=1), out.lengths)


def test_one_row_decodes_like_a_row_of_a_batch_with_stacked_states():
    """A one-row batch decodes as two copies of its row (sampling.MIN_DECODE_ROWS). With scan_layers (the
    blocks' states stacked, batch on axis 1; mLSTM blocks only, as scanning needs) the row still gets the
    greedy tokens the argmax of its full-sequence logits gives, and the callback sees one row."""
    scanned = make_model(small_config(kernel="chunkwise--jax", slstm_at=(), scan_layers=True))
    row = random_tokens(8, 1, PROMPT_LEN)
    steps = []
    out = generate(
        scanned, row, NEW, key=jax.random.key(0), temperature=0.0, callback=lambda t, a: steps.append(np.array(t))
    )
    assert out.tokens.shape == (1, NEW) and all(step.shape == (1,) for step in steps) and len(steps) == NEW
    logits = logits_of(scanned, jnp.concatenate([row, out.tokens], axis=1))
    np.testing.assert_array_equal(out.tokens, jnp.argmax(logits[:, PROMPT_LEN - 1 : -1], axis=-1))


def test_sample_text_streams_the_text_it_returns():
    model = make_model(small_config(vocab_size=ByteTokenizer.vocab_size), seed=2)
    pieces = []
    text = sample_text(model, ByteTokenizer(), "déf ", 12, seed=1, on_text=pieces.append)
    assert text.startswith("déf ") and "".join(pieces) == text[len("déf ") :]
    assert text == sample_text(model, ByteTokenizer(), "déf ", 12, seed=1)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"prompt": b"def "}, "prompt must be a str, got bytes"), ({"seed": 1.5}, "seed must be an int")],
)
def test_sample_text_names_a_bad_argument(model, kwargs, message):
    arguments = {"prompt": "def ", "seed": 0, **kwargs}
    with pytest.raises(TypeError, match=message):
        sample_text(model, ByteTokenizer(), arguments["prompt"], 4, seed=arguments["seed"])


BAD_ARGUMENTS = [
    ((jnp.zeros((2,), jnp.int32), 3), {}, "prompt must be an integer array"),
    ((jnp.zeros((2, 3), jnp.float32), 3), {}, "prompt must be an integer array"),
    (([[1, 2], []], 3), {}, "prompt 1 is empty"),
    (([], 3), {}, "non-empty list"),
    (([[1, VOCAB]], 3), {}, f"token id {VOCAB}, outside the vocabulary"),
    ((jnp.full((1, 2), -1, jnp.int32), 3), {}, "token id -1"),
    ((jnp.zeros((2, 3), jnp.int32), 3), {"prompt_lengths": np.array([1, 4])}, "prompt_lengths"),
    ((jnp.zeros((2, 3), jnp.int32), -1), {}, "max_new_tokens"),
    ((jnp.zeros((2, 3), jnp.int32), 2**31), {}, r"max_new_tokens must be an int in \[0, 2\*\*31 - 1\]"),
    ((jnp.zeros((2, 3), jnp.int32), 3), {"temperature": -1.0}, "temperature"),
    ((jnp.zeros((2, 3), jnp.int32), 3), {"top_k": VOCAB + 1}, "top_k"),
    ((jnp.zeros((2, 3), jnp.int32), 3), {"top_p": 0.0}, "top_p"),
    ((jnp.zeros((2, 3), jnp.int32), 3), {"top_p": 1.5}, "top_p"),
    ((jnp.zeros((2, 3), jnp.int32), 3), {"eos_id": VOCAB}, "eos_id"),
    ((jnp.zeros((2, 3), jnp.int32), 3), {"prompt_lengths": np.array([-1, 2])}, r"integers in \[1, 3\]"),
    ((jnp.zeros((2, 3), jnp.int32), 3), {"temperature": float("nan")}, "temperature must be a finite number"),
    ((jnp.zeros((2, 3), jnp.int32), 3), {"temperature": "0.8"}, "temperature must be a finite number"),
    ((jnp.zeros((2, 3), jnp.int32), 3), {"top_k": 2.5}, "top_k must be an int"),
    ((jnp.zeros((2, 3), jnp.int32), 3), {"eos_id": 2.5}, "eos_id must be an int"),
    ((jnp.zeros((2, 3), jnp.int32), 3), {"key": jax.random.split(jax.random.key(0), 3)}, "one per row"),
]


@pytest.mark.parametrize("args, kwargs, match", BAD_ARGUMENTS)
def test_bad_arguments_raise_before_any_work(model, args, kwargs, match, monkeypatch):
    import xlstm_flax.sampling as sampling

    monkeypatch.setattr(sampling, "generation_program", None)  # any work would fail with a TypeError
    with pytest.raises(ValueError, match=match):
        generate(model, *args, **{"key": jax.random.key(0), **kwargs})
