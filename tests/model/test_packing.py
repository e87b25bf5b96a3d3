"""Packed documents: a row holding several documents (``segment_ids``) gives, at every position, the
logits of its document run alone from a zero state: mLSTM (both variants, incl. the paper layer's
causal conv), sLSTM (scan, with its conv) and a mix; also with an initial state (first document only).

Tolerance: fp32 logits within PACKED_REL_TOL of their scale (documents sit at other chunk offsets
inside a packed row, so the kernels sum in another order); with chunkwise--triton on a GPU (``-m gpu``)
within GPU_REL_TOL, the fp32 tolerance of the Triton kernel tests."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from xlstm_flax.kernels import default_kernel

from .helpers import assert_close_to_scale, make_model, random_tokens, replace_mlstm, small_config

PACKED_REL_TOL = 1e-5
GPU_REL_TOL = 1e-4
ON_GPU = default_kernel() == "chunkwise--triton"
# two rows of 14 tokens: documents of lengths 5, 1, 8 and 9, 5
DOCUMENTS = ((5, 1, 8), (9, 5))


def segment_ids_of(lengths) -> np.ndarray:
    return np.concatenate([np.full(n, 10 * d + 3, np.int32) for d, n in enumerate(lengths)])  # any ids


@nnx.jit
def packed_logits(model, tokens, segment_ids):
    return model(tokens, segment_ids=segment_ids)


@nnx.jit
def logits_alone(model, tokens):
    return model(tokens)


def configs():
    """Both mLSTM variants (the paper one with its causal conv, in a scanned + rematerialised stack) and
    sLSTM blocks (scan and conv)."""
    yield pytest.param(small_config("xlstm7b", kernel="recurrent--jax"), PACKED_REL_TOL, id="xlstm7b + sLSTM")
    scanned = small_config("paper", kernel="chunkwise--jax", slstm_at=(), scan_layers=True, remat=True)
    yield pytest.param(scanned, PACKED_REL_TOL, id="paper, chunkwise, scan+remat")
    gpu = [pytest.mark.gpu, pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU with jax-triton")]
    for variant in ("xlstm7b", "paper"):
        config = replace_mlstm(small_config(variant, embedding_dim=64), kernel="chunkwise--triton", chunk_size=16)
        yield pytest.param(config, GPU_REL_TOL, id=f"{variant} + sLSTM, triton", marks=gpu)


@pytest.mark.parametrize("config, tolerance", list(configs()))
def test_packed_logits_equal_per_document_logits(config, tolerance):
    """Each document alone is a row of its own starting at position 0, right-padded with other tokens
    (causality: the padding cannot change the document's logits), all in one call. XLA matmuls run at
    full fp32 (JAX's GPU default is TF32, whose rounding differs between the packed and the lone rows)."""
    with jax.default_matmul_precision("highest"):
        _check_packed_equals_alone(config, tolerance)


def _check_packed_equals_alone(config, tolerance):
    model = make_model(config, seed=3)
    width = sum(DOCUMENTS[0])
    tokens = random_tokens(5, len(DOCUMENTS), width)
    segment_ids = jnp.asarray(np.stack([segment_ids_of(lengths) for lengths in DOCUMENTS]))
    spans = [
        (row, begin, end)
        for row, lengths in enumerate(DOCUMENTS)
        for begin, end in itertools.pairwise(np.cumsum((0, *lengths)))
    ]
    alone_rows = random_tokens(7, len(spans), width)
    for d, (row, begin, end) in enumerate(spans):
        alone_rows = alone_rows.at[d, : end - begin].set(tokens[row, begin:end])
    packed = packed_logits(model, tokens, segment_ids)
    alone = logits_alone(model, jnp.concatenate([alone_rows, tokens]))  # + the rows without resets
    alone, unpacked = alone[: len(spans)], alone[len(spans) :]
    for d, (row, begin, end) in enumerate(spans):
        assert_close_to_scale(
            packed[row, begin:end],
            alone[d, : end - begin],
            tolerance,
            f"document {begin}:{end} of row {row}",
        )
    # without resets the documents see each other: the test must tell
    assert float(jnp.abs(unpacked[0, 5:] - packed[0, 5:]).max()) > 1e-3, "the resets changed nothing"


def test_initial_state_applies_to_the_first_document_only():
    """A state carried from a previous call continues the row's first document; the second document
    still starts from zeros (sLSTM + paper mLSTM with convs)."""
    model = make_model(small_config("paper", kernel="recurrent--jax"), seed=4)
    tokens = random_tokens(6, 1, 12)
    segment_ids = jnp.asarray([[0] * 7 + [1] * 5], jnp.int32)

    @nnx.jit
    def split_run(model, tokens, segment_ids):
        _, state = model(tokens[:, :4], return_state=True)
        return model(tokens[:, 4:], state, segment_ids=segment_ids[:, 4:])

    continued = split_run(model, tokens, segment_ids)
    whole_first = logits_alone(model, tokens[:, :7])
    second_alone = logits_alone(model, tokens[:, 7:])
    assert_close_to_scale(continued[:, :3], whole_first[:, 4:], PACKED_REL_TOL, "first document, continued")
    assert_close_to_scale(continued[:, 3:], second_alone, PACKED_REL_TOL, "second document")


def test_segment_ids_shape_is_checked():
    model = make_model(small_config(slstm_at=(0, 1)), perturb=False)
    with pytest.raises(ValueError, match="segment_ids shape"):
        model(random_tokens(0, 2, 6), segment_ids=jnp.zeros((2, 5), jnp.int32))
    with pytest.raises(ValueError, match="segment_ids must be a non-empty integer array"):
        model(random_tokens(0, 2, 6), segment_ids=jnp.zeros((2, 6), jnp.float32))
