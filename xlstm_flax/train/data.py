"""Training data: tokenizers, token streams and deterministic batches.

Sources (``DataConfig.path``):
- ``"stdlib"``: the Python standard library's own ``.py`` files, read at run time (no download);
- a text file or glob: each file is one document, tokenized with the byte tokenizer or a Hugging Face
  ``tokenizer.json`` (``DataConfig.tokenizer``);
- ``.npy`` token arrays or raw ``.bin`` memmaps (``bin_dtype`` uint16/uint32), opened with
  ``mmap_mode``/``np.memmap`` and never loaded whole; they already hold their EOS tokens.

Documents are joined with an EOS token after each one. A batch is a pure function of
``(seed, split, index)``: resuming at step k replays exactly the batches an uninterrupted run sees.

Packing (``pack_documents``): a window of the stream holds the end of one document, whole documents
and the start of another; each EOS closes its document, and the model restarts its state after it
(:func:`document_segment_ids`, computed inside the train / eval step from the tokens themselves).
"""

from __future__ import annotations

import dataclasses
import glob
import math
import os
import sysconfig
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from ..vocab import BYTE_EOS_ID, BYTE_VOCAB_SIZE

STDLIB = "stdlib"
TOKEN_SUFFIXES = (".npy", ".bin")
BIN_DTYPES = ("uint16", "uint32")
SCAN_CHUNK = 1 << 24  # tokens per chunk when scanning token files


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the tokens come from and how they are split into train / validation."""

    path: str = STDLIB  # "stdlib", a text file/glob, or .npy/.bin token file(s)/glob
    val_path: str | None = None  # separate validation data; None: split ``path``
    val_fraction: float = 0.05  # share of files (text) or stream tail held out for validation
    tokenizer: str = "bytes"  # "bytes" or the path of a Hugging Face tokenizer.json
    eos_token: str = "<|endoftext|>"  # EOS token of a tokenizer.json
    bin_dtype: str = "uint16"  # element type of raw .bin token files
    pack_documents: bool = False  # reset the model's state after every EOS (documents do not see each other)
    mask_first_target: bool = False  # with packing: no loss on each document's first token (it is
    # predicted from the previous document's EOS)
    eos_id: int | None = None  # EOS id that ends documents in token files (default: the tokenizer's)

    def __post_init__(self):
        if not self.path:
            raise ValueError("path must not be empty")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.mask_first_target and not self.pack_documents:
            raise ValueError("mask_first_target needs pack_documents: true")
        if self.eos_id is not None and self.eos_id < 0:
            raise ValueError(f"eos_id must be >= 0 or null, got {self.eos_id}")
        if self.bin_dtype not in BIN_DTYPES:
            raise ValueError(f"bin_dtype must be one of {BIN_DTYPES}, got {self.bin_dtype!r}")


class DataError(ValueError):
    """Unusable data: missing/empty path, bad token file, token id out of range."""


class Tokenizer(Protocol):
    vocab_size: int
    eos_id: int
    is_byte_level: bool

    def encode(self, data: bytes) -> np.ndarray: ...
    def decode(self, ids: Sequence[int]) -> str: ...


class ByteTokenizer:
    """Bytes 0..255 are their own ids, then EOS (``xlstm_flax.vocab``)."""

    vocab_size = BYTE_VOCAB_SIZE
    eos_id = BYTE_EOS_ID
    is_byte_level = True

    def encode(self, data: bytes) -> np.ndarray:
        return np.frombuffer(data, dtype=np.uint8).astype(np.uint16)

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")


class HFTokenizer:
    """A Hugging Face ``tokenizers`` tokenizer.json (optional dependency)."""

    is_byte_level = False

    def __init__(self, path: str, eos_token: str):
        try:
            from tokenizers import Tokenizer as _Tokenizer
        except ImportError:
            raise DataError(
                f"data.tokenizer={path!r} needs the optional package 'tokenizers' "
                "(pip install 'xlstm-flax[tokenizers]')"
            ) from None
        if not Path(path).is_file():
            raise DataError(f"data.tokenizer: file not found: {path}")
        try:
            self._tok = _Tokenizer.from_file(path)
        except Exception as err:  # tokenizers raises its own exception types for a malformed file
            raise DataError(f"data.tokenizer: {path} is not a tokenizer.json: {' '.join(str(err).split())}") from None
        self.vocab_size = self._tok.get_vocab_size()
        eos = self._tok.token_to_id(eos_token)
        if eos is None:
            raise DataError(f"data.eos_token {eos_token!r} is not in the vocabulary of {path}")
        self.eos_id = eos

    def encode(self, data: bytes) -> np.ndarray:
        ids = self._tok.encode(data.decode("utf-8", errors="replace")).ids
        return np.asarray(ids, dtype=np.uint32)

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids])


def make_tokenizer(config: DataConfig) -> Tokenizer:
    return ByteTokenizer() if config.tokenizer == "bytes" else HFTokenizer(config.tokenizer, config.eos_token)


@dataclasses.dataclass
class Corpus:
    """Train / validation token streams (1-D arrays or memmaps) plus train-split unigram counts."""

    train: list[np.ndarray]
    val: list[np.ndarray]
    tokenizer: Tokenizer
    unigram_counts: np.ndarray  # (vocab_size,) int64, train split
    byte_level: bool  # one token per byte of text (losses convert to bits per byte)

    def unigram_entropy(self) -> float:
        """Entropy of the train split's token frequencies, in nats per token."""
        p = self.unigram_counts[self.unigram_counts > 0] / self.unigram_counts.sum()
        return float(-(p * np.log(p)).sum())


@dataclasses.dataclass(frozen=True)
class Packing:
    """How the train / eval steps split windows into documents: ``eos_id`` ends a document; with
    ``mask_first_target`` the target right after each EOS carries no loss."""

    eos_id: int
    mask_first_target: bool = False


def document_packing(config: DataConfig, tokenizer: Tokenizer) -> Packing | None:
    """The packing of a run (None without ``pack_documents``)."""
    if not config.pack_documents:
        return None
    eos_id = tokenizer.eos_id if config.eos_id is None else config.eos_id
    return Packing(eos_id, config.mask_first_target)


def document_segment_ids(tokens, eos_id: int):
    """tokens int (B, L) -> int32 (B, L) segment ids: the number of EOS tokens before each position,
    so an EOS ends its document and the next token starts a new one (numpy or jax arrays)."""
    is_eos = (tokens == eos_id).astype(np.int32)
    return is_eos.cumsum(axis=-1, dtype=np.int32) - is_eos


def load_corpus(config: DataConfig, vocab_size: int) -> Corpus:
    """Read, tokenize, split and check the data before training starts.

    Raises ``DataError`` for a missing or empty path, a token id >= ``vocab_size`` or a tokenizer
    larger than the model's vocabulary.
    """
    tokenizer = make_tokenizer(config)
    if tokenizer.vocab_size > vocab_size:
        raise DataError(f"tokenizer has {tokenizer.vocab_size} ids but model.vocab_size is {vocab_size}")
    if config.eos_id is not None and config.eos_id >= vocab_size:
        raise DataError(f"data.eos_id={config.eos_id} is outside the model vocabulary [0, {vocab_size})")
    files = _resolve(config.path, "data.path")
    if config.val_path is not None:
        train = _read_streams(files, config, tokenizer)
        val = _read_streams(_resolve(config.val_path, "data.val_path"), config, tokenizer)
    else:
        train, val = _split(files, config, tokenizer)
    counts = np.zeros(vocab_size, dtype=np.int64)
    for split, streams in (("train", train), ("validation", val)):
        if sum(len(s) for s in streams) == 0:
            raise DataError(f"the {split} split of data.path={config.path!r} holds no tokens")
        for stream in streams:
            _check_ids(stream, vocab_size, counts if split == "train" else None, config.path)
    return Corpus(train, val, tokenizer, counts, tokenizer.is_byte_level and not _is_token_file(files[0]))


def check_window_length(corpus: Corpus, length: int, config: DataConfig) -> None:
    """Both splits need a stream of at least ``length`` tokens (``train.seq_len + 1``): a DataError names
    the split, its source and its longest stream otherwise."""
    val_source = (
        f"data.val_path={config.val_path!r}"
        if config.val_path is not None
        else (f"data.path={config.path!r} (data.val_fraction={config.val_fraction})")
    )
    for split, streams, source in (
        ("train", corpus.train, f"data.path={config.path!r}"),
        ("validation", corpus.val, val_source),
    ):
        longest = max((len(s) for s in streams), default=0)
        if longest < length:
            raise DataError(
                f"the {split} split of {source} is too short: its longest stream holds {longest} "
                f"tokens, a training window needs {length} (train.seq_len + 1)"
            )


def sample_windows(
    streams: Sequence[np.ndarray], length: int, num: int, key: tuple[int, ...], rows: slice = slice(None)
) -> np.ndarray:
    """``num`` random windows of ``length`` tokens, int32 ``(num, length)``, a pure function of ``key``;
    only the windows ``rows`` are read and returned (a process's part of a global batch).

    Every window start is equally likely over all streams (a window never crosses a stream's end).
    """
    starts_per_stream = np.array([max(len(s) - length + 1, 0) for s in streams], dtype=np.int64)
    total = int(starts_per_stream.sum())
    if total == 0:
        longest = max((len(s) for s in streams), default=0)
        raise DataError(f"no stream holds {length} tokens (seq_len + 1); the longest has {longest}")
    picks = np.random.default_rng(key).integers(0, total, size=num)
    bounds = np.cumsum(starts_per_stream)
    which = np.searchsorted(bounds, picks, side="right")
    offsets = picks - (bounds[which] - starts_per_stream[which])
    return np.stack(
        [np.asarray(streams[w][o : o + length], dtype=np.int32) for w, o in zip(which[rows], offsets[rows])]
    )


def stdlib_files() -> list[Path]:
    """The standard library's ``.py`` files (no site-packages), sorted for a stable order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "__pycache__"}
    return sorted(p for p in root.rglob("*.py") if not skip.intersection(p.relative_to(root).parts))


def _resolve(path: str, key: str) -> list[Path]:
    """The files a path / glob / ``"stdlib"`` names; error when none exist."""
    if path == STDLIB:
        files = stdlib_files()
    elif any(ch in path for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(path, recursive=True) if Path(p).is_file())
    else:
        files = [Path(path)] if Path(path).is_file() else []
    if not files and Path(path).is_dir():
        raise DataError(f"{key}={path!r} is a directory: name its files with a glob, e.g. {key}='{path}/*.txt'")
    if not files:
        raise DataError(f"{key}={path!r}: no such file (or the glob matches no files)")
    kinds = {_is_token_file(f) for f in files}
    if len(kinds) > 1:
        raise DataError(f"{key}={path!r} mixes token files (.npy/.bin) and text files")
    return files


def _is_token_file(path: Path) -> bool:
    return path.suffix in TOKEN_SUFFIXES


def _split(files: list[Path], config: DataConfig, tokenizer: Tokenizer):
    """Text: whole files go to validation by a stable hash of their name; token files (or text too
    few to split by file): the last ``val_fraction`` of every stream."""
    if not _is_token_file(files[0]):
        root = os.path.commonpath([str(f.parent) for f in files])
        is_val = [_stable_fraction(f.relative_to(root).as_posix()) < config.val_fraction for f in files]
        if any(is_val) and not all(is_val):
            train = [f for f, v in zip(files, is_val) if not v]
            val = [f for f, v in zip(files, is_val) if v]
            return _read_streams(train, config, tokenizer), _read_streams(val, config, tokenizer)
    train, val = [], []
    for stream in _read_streams(files, config, tokenizer):
        cut = len(stream) - math.ceil(len(stream) * config.val_fraction)
        train.append(stream[:cut])
        val.append(stream[cut:])
    return train, val


def _stable_fraction(name: str) -> float:
    """A fraction in [0, 1) fixed by ``name`` (the path relative to the files' common directory, so
    the split does not depend on where the data lives)."""
    return zlib.crc32(name.encode()) / 2**32


def _read_streams(files: list[Path], config: DataConfig, tokenizer: Tokenizer) -> list[np.ndarray]:
    if _is_token_file(files[0]):
        return [_open_token_file(f, config.bin_dtype) for f in files]
    if not any(f.stat().st_size for f in files):
        raise DataError(f"data.path={config.path!r}: the {len(files)} file(s) hold no text")
    return [_join_documents(files, tokenizer)]


def _join_documents(files: list[Path], tokenizer: Tokenizer) -> np.ndarray:
    """Tokenize each file as one document and join them with EOS after each."""
    eos = np.array([tokenizer.eos_id])
    parts = []
    for f in files:
        parts += [tokenizer.encode(f.read_bytes()), eos]
    return np.concatenate(parts).astype(np.uint32 if tokenizer.vocab_size > 2**16 else np.uint16)


def _open_token_file(path: Path, bin_dtype: str) -> np.ndarray:
    """A memory-mapped 1-D integer token array (nothing is read yet)."""
    if path.stat().st_size == 0:
        raise DataError(f"token file is empty: {path}")
    if path.suffix == ".npy":
        try:
            tokens = np.load(path, mmap_mode="r")
        except ValueError as err:
            raise DataError(f"cannot read {path} as .npy: {err}") from None
        if tokens.ndim != 1 or tokens.dtype.kind not in "iu":
            raise DataError(f"{path}: expected a 1-D integer token array, got {tokens.dtype} {tokens.shape}")
        return tokens
    itemsize = np.dtype(bin_dtype).itemsize
    if path.stat().st_size % itemsize:
        raise DataError(
            f"{path}: size {path.stat().st_size} is not a multiple of {bin_dtype} "
            f"({itemsize} bytes); is data.bin_dtype right?"
        )
    return np.memmap(path, dtype=bin_dtype, mode="r")


def _check_ids(stream: np.ndarray, vocab_size: int, counts: np.ndarray | None, source: str) -> None:
    """Scan ``stream`` in chunks: every id must be in [0, vocab_size); add to ``counts`` if given."""
    for begin in range(0, len(stream), SCAN_CHUNK):
        chunk = np.asarray(stream[begin : begin + SCAN_CHUNK])
        low, high = int(chunk.min()), int(chunk.max())
        if low < 0 or high >= vocab_size:
            bad = high if high >= vocab_size else low
            where = getattr(stream, "filename", None) or source
            raise DataError(
                f"token id {bad} in {where} is outside the model vocabulary [0, {vocab_size}) (model.vocab_size)"
            )
        if counts is not None:
            counts += np.bincount(chunk, minlength=vocab_size)
