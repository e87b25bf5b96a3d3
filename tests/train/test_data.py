"""Data readers: text, .npy, .bin memmaps, EOS boundaries, splits, errors, deterministic batches."""

import sys

import numpy as np
import pytest

from xlstm_flax.train.data import ByteTokenizer, DataConfig, DataError, load_corpus, sample_windows, stdlib_files

EOS = ByteTokenizer.eos_id
VOCAB = ByteTokenizer.vocab_size


def test_text_files_are_documents_joined_with_eos(tmp_path):
    texts = {f"doc{i}.txt": f"document number {i}\n".encode() * (i + 1) for i in range(6)}
    for name, data in texts.items():
        (tmp_path / name).write_bytes(data)
    corpus = load_corpus(DataConfig(path=str(tmp_path / "*.txt"), val_fraction=0.3), VOCAB)
    (train,), (val,) = corpus.train, corpus.val
    pieces = [d for part in (train, val) for d in np.split(part, np.flatnonzero(part == EOS) + 1) if len(d)]
    # every document is one whole file followed by exactly one EOS, and no file is lost or repeated
    assert all(d[-1] == EOS for d in pieces)
    assert sorted(bytes(d[:-1].astype(np.uint8)) for d in pieces) == sorted(texts.values())
    assert corpus.unigram_counts.sum() == len(train) and corpus.byte_level
    assert corpus.unigram_counts[EOS] == (train == EOS).sum()


def test_split_is_deterministic_and_by_file(tmp_path):
    for i in range(20):
        (tmp_path / f"f{i:02d}.txt").write_text(f"file {i}\n")
    cfg = DataConfig(path=str(tmp_path / "*.txt"), val_fraction=0.25)
    a, b = load_corpus(cfg, VOCAB), load_corpus(cfg, VOCAB)
    np.testing.assert_array_equal(a.val[0], b.val[0])
    val_text = ByteTokenizer().decode(a.val[0])
    train_text = ByteTokenizer().decode(a.train[0])
    assert val_text and train_text
    assert not any(f"file {i}\n" in val_text and f"file {i}\n" in train_text for i in range(20))


def test_single_text_file_splits_its_tail(tmp_path):
    (tmp_path / "one.txt").write_bytes(bytes(range(200)) * 5)
    corpus = load_corpus(DataConfig(path=str(tmp_path / "one.txt"), val_fraction=0.1), VOCAB)
    joined = np.concatenate([corpus.train[0], corpus.val[0]])
    assert len(corpus.val[0]) == 101  # ceil(0.1 * 1001 tokens incl. EOS)
    assert joined[-1] == EOS and bytes(joined[:-1].astype(np.uint8)) == bytes(range(200)) * 5


def test_npy_tokens_are_memory_mapped(tmp_path):
    tokens = np.random.default_rng(0).integers(0, 1000, size=5000).astype(np.uint16)
    np.save(tmp_path / "tokens.npy", tokens)
    corpus = load_corpus(DataConfig(path=str(tmp_path / "tokens.npy"), val_fraction=0.2), 1000)
    assert isinstance(corpus.train[0], np.memmap) and not corpus.byte_level
    np.testing.assert_array_equal(np.concatenate([corpus.train[0], corpus.val[0]]), tokens)
    assert len(corpus.val[0]) == 1000
    np.testing.assert_array_equal(corpus.unigram_counts, np.bincount(tokens[:4000], minlength=1000))


@pytest.mark.parametrize("dtype, vocab", [("uint16", 60000), ("uint32", 100_000)])
def test_bin_memmap(tmp_path, dtype, vocab):
    tokens = np.random.default_rng(1).integers(0, vocab, size=3000).astype(dtype)
    tokens.tofile(tmp_path / "train.bin")
    tokens[:500].tofile(tmp_path / "val.bin")
    cfg = DataConfig(path=str(tmp_path / "train.bin"), val_path=str(tmp_path / "val.bin"), bin_dtype=dtype)
    corpus = load_corpus(cfg, vocab)
    assert isinstance(corpus.train[0], np.memmap) and corpus.train[0].dtype == np.dtype(dtype)
    np.testing.assert_array_equal(corpus.train[0], tokens)
    np.testing.assert_array_equal(corpus.val[0], tokens[:500])


def test_windows_are_pure_functions_of_key_and_stay_inside_streams():
    streams = [np.arange(100, dtype=np.uint16), np.arange(1000, 1010, dtype=np.uint16)]
    a = sample_windows(streams, 8, 64, (3, 0, 7))
    np.testing.assert_array_equal(a, sample_windows(streams, 8, 64, (3, 0, 7)))
    assert not np.array_equal(a, sample_windows(streams, 8, 64, (3, 0, 8)))
    assert a.dtype == np.int32 and a.shape == (64, 8)
    # a window is consecutive tokens of one stream: never crosses 99 -> 1000 or runs past an end
    assert (np.diff(a, axis=1) == 1).all()
    assert ((a[:, -1] <= 99) | ((a[:, 0] >= 1000) & (a[:, -1] <= 1009))).all()


@pytest.mark.parametrize(
    "path, message",
    [
        ("{tmp}/missing.txt", "no such file"),
        ("{tmp}/*.nothing", "no such file"),
        ("{tmp}", r"is a directory: name its files with a glob, e\.g\. data\.path='.*/\*\.txt'"),
    ],
)
def test_missing_path(tmp_path, path, message):
    with pytest.raises(DataError, match=message):
        load_corpus(DataConfig(path=path.format(tmp=tmp_path)), VOCAB)


def test_empty_files(tmp_path):
    (tmp_path / "empty.bin").write_bytes(b"")
    with pytest.raises(DataError, match="token file is empty"):
        load_corpus(DataConfig(path=str(tmp_path / "empty.bin")), VOCAB)
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(DataError, match=r"data.path=.*empty\.txt.* hold no text"):
        load_corpus(DataConfig(path=str(tmp_path / "empty.txt")), VOCAB)


def test_token_id_out_of_vocab(tmp_path):
    tokens = np.random.default_rng(2).integers(0, 500, size=4000).astype(np.uint16)
    tokens[1234] = 700
    tokens.tofile(tmp_path / "t.bin")
    with pytest.raises(DataError, match=r"token id 700 in .*t\.bin is outside the model vocabulary \[0, 500\)"):
        load_corpus(DataConfig(path=str(tmp_path / "t.bin"), val_fraction=0.5), 500)


def test_bad_bin_size_and_mixed_glob(tmp_path):
    (tmp_path / "odd.bin").write_bytes(b"\x00" * 7)
    with pytest.raises(DataError, match="not a multiple of uint16"):
        load_corpus(DataConfig(path=str(tmp_path / "odd.bin")), VOCAB)
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(DataError, match="mixes token files"):
        load_corpus(DataConfig(path=str(tmp_path / "*")), VOCAB)


def test_tokenizer_larger_than_model_vocab():
    with pytest.raises(DataError, match="tokenizer has 258 ids but model.vocab_size is 100"):
        load_corpus(DataConfig(), 100)


def test_stdlib_corpus_is_found():
    files = stdlib_files()
    names = {f.name for f in files}
    assert {"os.py", "functools.py"} <= names
    assert not any("site-packages" in f.parts for f in files)


def test_tokenizer_json_without_the_optional_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # makes `import tokenizers` fail
    (tmp_path / "a.txt").write_text("hello")
    with pytest.raises(DataError, match="needs the optional package 'tokenizers'"):
        load_corpus(DataConfig(path=str(tmp_path / "a.txt"), tokenizer=str(tmp_path / "tok.json")), 1000)


def _word_level_tokenizer(path, words):
    """A tokenizer.json (Hugging Face ``tokenizers``) mapping whitespace-separated words to ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(["<unk>", "<|endoftext|>", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path))
    return vocab


def test_tokenizer_json_documents_end_with_its_eos(tmp_path):
    pytest.importorskip("tokenizers")
    vocab = _word_level_tokenizer(tmp_path / "tok.json", ["alpha", "beta", "gamma", "delta"])
    docs = ["alpha beta", "gamma delta alpha", "beta beta"]
    for n, text in enumerate(docs):
        (tmp_path / f"d{n}.txt").write_text(text)
    config = DataConfig(
        path=str(tmp_path / "d*.txt"), val_path=str(tmp_path / "d0.txt"), tokenizer=str(tmp_path / "tok.json")
    )
    corpus = load_corpus(config, 16)
    tokens = np.concatenate(corpus.train)
    expected = sorted(tuple(vocab[w] for w in d.split()) + (vocab["<|endoftext|>"],) for d in docs)
    pieces = np.split(tokens, np.flatnonzero(tokens == vocab["<|endoftext|>"]) + 1)
    assert sorted(tuple(int(t) for t in p) for p in pieces if len(p)) == expected
    assert not corpus.byte_level
    with pytest.raises(DataError, match="tokenizer has 6 ids but model.vocab_size is 5"):
        load_corpus(config, 5)
