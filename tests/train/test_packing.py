"""Document packing: segment ids of sampled windows line up with the documents (a new segment right
after each EOS, one document per segment), the EOS id of text and token sources, config errors."""

import jax.numpy as jnp
import numpy as np
import pytest

from xlstm_flax.train.data import (
    ByteTokenizer,
    DataConfig,
    DataError,
    document_packing,
    document_segment_ids,
    load_corpus,
    sample_windows,
)

EOS = 0


def documents_stream(seed: int) -> np.ndarray:
    """Documents of 1..9 tokens, document d filled with the value d % 200 + 1, each followed by EOS 0."""
    lengths = np.random.default_rng(seed).integers(1, 10, size=300)
    return np.concatenate([np.r_[np.full(n, d % 200 + 1), EOS] for d, n in enumerate(lengths)]).astype(np.uint16)


def test_window_segment_ids_line_up_with_documents():
    windows = sample_windows([documents_stream(0)], 33, 64, (0, 0, 1))
    segment_ids = document_segment_ids(windows, EOS)
    assert segment_ids.dtype == np.int32 and segment_ids.shape == windows.shape
    # a new segment starts exactly after an EOS, and ids start at 0 and count up by one
    starts = segment_ids[:, 1:] != segment_ids[:, :-1]
    np.testing.assert_array_equal(starts, windows[:, :-1] == EOS)
    assert (segment_ids[:, 0] == 0).all() and (np.diff(segment_ids, axis=1) >= 0).all()
    for tokens, ids in zip(windows, segment_ids):
        docs = [set(tokens[(ids == s) & (tokens != EOS)].tolist()) for s in range(ids[-1] + 1)]
        assert all(len(d) <= 1 for d in docs), "a segment mixes documents"
        labels = [d.pop() for d in docs if d]
        assert all(a != b for a, b in zip(labels, labels[1:])), "a document spans two segments"
    np.testing.assert_array_equal(np.asarray(document_segment_ids(jnp.asarray(windows), EOS)), segment_ids)


def test_packing_eos_of_text_and_token_sources(tmp_path):
    assert document_packing(DataConfig(), ByteTokenizer()) is None
    text = document_packing(DataConfig(pack_documents=True, mask_first_target=True), ByteTokenizer())
    assert text.eos_id == ByteTokenizer.eos_id and text.mask_first_target
    assert document_packing(DataConfig(pack_documents=True, eos_id=7), ByteTokenizer()).eos_id == 7
    np.save(tmp_path / "tokens.npy", documents_stream(1))
    with pytest.raises(DataError, match="data.eos_id=300 is outside"):
        load_corpus(DataConfig(path=str(tmp_path / "tokens.npy"), pack_documents=True, eos_id=300), 258)


def test_mask_first_target_needs_packing():
    with pytest.raises(ValueError, match="mask_first_target needs pack_documents"):
        DataConfig(mask_first_target=True)
