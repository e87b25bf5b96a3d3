"""Bad inputs to the pure-JAX backends raise ValueErrors that name the offending argument."""

import re

import jax
import jax.numpy as jnp
import pytest

from tests.reference import random_inputs
from xlstm_flax.kernels import get_kernel
from xlstm_flax.kernels.common import default_chunk_size, padded_length

SEQUENCE_KERNELS = ("parallel--jax", "recurrent--jax", "chunkwise--jax")
B, NH, S, DHQK, DHV = 2, 3, 5, 4, 6


@pytest.fixture(scope="module")
def inputs():
    return random_inputs(jax.random.PRNGKey(0), B=B, NH=NH, S=S, DHQK=DHQK, DHV=DHV, with_states=True)


def with_replaced(x, **changes):
    return {**x, **changes}


BAD_SEQUENCE_INPUTS = [
    ("q", lambda x: x["q"][0], "q must have rank 4"),
    ("i", lambda x: x["i"][..., None], "i must have rank 3"),
    ("k", lambda x: x["k"][:, :, :-1], "k has shape"),  # S mismatch
    ("v", lambda x: x["v"][:1], "v has shape"),  # B mismatch
    ("f", lambda x: x["f"][:, :2], "f has shape"),  # NH mismatch
    ("i", lambda x: x["i"][:, :, 1:], "i has shape"),  # S mismatch
    ("c_initial", lambda x: x["c_initial"][..., 1:], "c_initial has shape"),
    ("n_initial", lambda x: x["n_initial"][:, :, None], "n_initial has shape"),
    ("m_initial", lambda x: x["m_initial"][:1], "m_initial has shape"),
    ("q", lambda x: x["q"].astype(jnp.int32), "q must be a float array"),
    ("v", lambda x: x["v"].astype(jnp.bfloat16), "q, k, v must share a dtype"),
]


@pytest.mark.parametrize("name", SEQUENCE_KERNELS)
@pytest.mark.parametrize("arg, corrupt, message", BAD_SEQUENCE_INPUTS)
def test_bad_sequence_inputs(inputs, name, arg, corrupt, message):
    with pytest.raises(ValueError, match=message):
        get_kernel(name)(**with_replaced(inputs, **{arg: corrupt(inputs)}))


@pytest.mark.parametrize("name", SEQUENCE_KERNELS)
@pytest.mark.parametrize(
    "option, message",
    [
        (dict(chunk_size=0), "chunk_size must be a positive int or None, got 0"),
        (dict(chunk_size=-4), "chunk_size must be a positive int or None, got -4"),
        (dict(chunk_size=2.5), "chunk_size must be a positive int or None, got 2.5"),
        (dict(chunk_size=True), "chunk_size must be a positive int or None, got True"),
        (dict(eps=-1.0), "eps must be a finite number >= 0, got -1.0"),
        (dict(eps=float("nan")), "eps must be a finite number >= 0, got nan"),
        (dict(qk_scale=float("inf")), "qk_scale must be a finite number or None, got inf"),
    ],
)
def test_bad_scalar_options(inputs, name, option, message):
    """Also the backends that have no chunks: a chunk_size they would ignore is still refused."""
    with pytest.raises(ValueError, match=re.escape(message)):
        get_kernel(name)(**inputs, **option)


def step_args(x):
    return dict(
        q=x["q"][:, :, 0],
        k=x["k"][:, :, 0],
        v=x["v"][:, :, 0],
        i=x["i"][:, :, 0],
        f=x["f"][:, :, 0],
        c=x["c_initial"],
        n=x["n_initial"],
        m=x["m_initial"],
    )


@pytest.mark.parametrize(
    "arg, corrupt, message",
    [
        ("q", lambda a: a["q"][..., None], "q must have rank 3"),
        ("m", lambda a: a["m"][..., None], "m must have rank 2"),
        ("k", lambda a: a["k"][:, :, 1:], "k has shape"),
        ("v", lambda a: a["v"][:1], "v has shape"),
        ("f", lambda a: a["f"][:, :1], "f has shape"),
        ("c", lambda a: a["c"][:, :, 1:], "c has shape"),
        ("n", lambda a: a["n"][:1], "n has shape"),
        ("i", lambda a: a["i"].astype(jnp.int32), "i must be a float array"),
    ],
)
def test_bad_step_inputs(inputs, arg, corrupt, message):
    args = step_args(inputs)
    args[arg] = corrupt(args)
    with pytest.raises(ValueError, match=message):
        get_kernel("step--jax")(**args)


@pytest.mark.parametrize(
    "S, chunk", [(1, 16), (10, 16), (100, 128), (1000, 128), (2047, 128), (2048, 256), (9000, 256)]
)
def test_one_chunk_size_policy(S, chunk):
    """Every chunkwise backend's default chunk: 256 from S = 2048 on, else min(128, S rounded up to a
    power of two >= 16); S is padded up to a multiple of it."""
    assert default_chunk_size(S) == chunk
    assert padded_length(S, chunk) % chunk == 0 and 0 <= padded_length(S, chunk) - S < chunk
