"""generate(): shapes, greedy decoding equals the argmax of full-sequence logits (teacher forcing),
top-k sampling stays inside the top k, argument errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xlstm_flax.sampling import generate

from .helpers import VOCAB, make_model, random_tokens, small_config

PROMPT_LEN, NEW = 5, 7


@pytest.fixture(scope="module")
def model():
    return make_model(small_config(kernel="chunkwise--jax"))


@pytest.fixture(scope="module")
def prompt():
    return random_tokens(5, 2, PROMPT_LEN)


def test_greedy_generation_equals_argmax_of_full_sequence_logits(model, prompt):
    out = generate(model, prompt, NEW, key=jax.random.key(0), temperature=0.0)
    assert out.shape == (2, PROMPT_LEN + NEW) and out.dtype == jnp.int32
    np.testing.assert_array_equal(out[:, :PROMPT_LEN], prompt)
    logits = model(out)
    # each generated token is the argmax of the logits of the whole sequence one position earlier
    np.testing.assert_array_equal(out[:, PROMPT_LEN:], jnp.argmax(logits[:, PROMPT_LEN - 1 : -1], axis=-1))


def test_top_k_sampling_stays_in_the_top_k(model, prompt):
    k = 3
    out = generate(model, prompt, NEW, key=jax.random.key(1), temperature=1.0, top_k=k)
    assert out.shape == (2, PROMPT_LEN + NEW)
    logits = model(out)[:, PROMPT_LEN - 1 : -1]
    top = jax.lax.top_k(logits, k)[1]
    assert bool((top == out[:, PROMPT_LEN:, None]).any(-1).all()), "a token outside the top k was drawn"
    different_key = generate(model, prompt, NEW, key=jax.random.key(2), temperature=1.0, top_k=k)
    assert not bool((different_key == out).all()), "sampling ignores the key"


def test_zero_new_tokens_returns_the_prompt(model, prompt):
    np.testing.assert_array_equal(generate(model, prompt, 0, key=jax.random.key(0)), prompt)


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        ((jnp.zeros((2,), jnp.int32), 3), {}, "prompt must be an integer array"),
        ((jnp.zeros((2, 3), jnp.float32), 3), {}, "prompt must be an integer array"),
        ((jnp.zeros((2, 3), jnp.int32), -1), {}, "max_new_tokens"),
        ((jnp.zeros((2, 3), jnp.int32), 3), {"temperature": -1.0}, "temperature"),
        ((jnp.zeros((2, 3), jnp.int32), 3), {"top_k": VOCAB + 1}, "top_k"),
    ],
)
def test_bad_arguments_raise(model, args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate(model, *args, key=jax.random.key(0), **kwargs)
