"""A Hugging Face checkpoint directory read lazily, tensor by tensor, and written shard by shard.

Reading: ``config.json`` plus ``model.safetensors`` or ``model.safetensors.index.json`` with its
``model-0000x-of-0000y.safetensors`` files; tensors come as numpy arrays (bf16 via ml_dtypes) one at a
time, so a large model never sits twice in host memory. Writing: tensors are grouped into shards of
at most ``max_shard_bytes`` and each shard is written as soon as it is complete.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

CONFIG_FILE = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
METADATA = {"format": "pt"}  # transformers refuses safetensors files without it


class CheckpointError(ValueError):
    """A checkpoint directory is incomplete or inconsistent; the message names the file and tensor."""


class SafetensorsDir(contextlib.AbstractContextManager):
    """Open checkpoint directory: ``config`` (the parsed config.json), ``names`` (tensor name -> file),
    ``shape(name)`` and ``read(name)``. Use as a context manager (closes the files)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise CheckpointError(f"not a directory: {self.path}")
        config_path = self.path / CONFIG_FILE
        if not config_path.is_file():
            raise CheckpointError(f"missing {config_path}")
        self.config = _read_json_object(config_path)
        self._stack = contextlib.ExitStack()
        self._handles = {}
        self.names: dict[str, Path] = {}
        try:
            for file, expected in self._files().items():
                self._open(file, expected)
        except BaseException:
            self._stack.close()
            raise

    def _files(self) -> dict[Path, list[str] | None]:
        """Each safetensors file and the tensor names the index assigns to it (None: no index)."""
        index = self.path / INDEX_FILE
        if index.is_file():
            weight_map = _read_json_object(index).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise CheckpointError(f"{index}: no 'weight_map' of tensor names to files")
            files: dict[Path, list[str]] = {}
            for name, file in weight_map.items():
                files.setdefault(self.path / file, []).append(name)
            return files
        if (self.path / SINGLE_FILE).is_file():
            return {self.path / SINGLE_FILE: None}
        raise CheckpointError(f"no {SINGLE_FILE} or {INDEX_FILE} in {self.path}")

    def _open(self, file: Path, expected: list[str] | None) -> None:
        if not file.is_file():
            raise CheckpointError(f"missing {file} (listed in {self.path / INDEX_FILE})")
        try:
            handle = self._stack.enter_context(safe_open(str(file), framework="numpy"))
        except Exception as err:  # safetensors raises its own SafetensorError (no file named) for a bad header
            raise CheckpointError(f"{file}: not a readable safetensors file ({err})") from None
        keys = set(handle.keys())
        for name in keys if expected is None else expected:
            if name not in keys:
                raise CheckpointError(f"{file}: tensor {name!r} listed in {INDEX_FILE} is not in the file")
            if name in self.names:
                raise CheckpointError(f"tensor {name!r} is in both {self.names[name]} and {file}")
            self.names[name] = file
        self._handles[file] = handle

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._handles[self.names[name]].get_slice(name).get_shape())

    def read(self, name: str) -> np.ndarray:
        """One tensor as a numpy array (its stored dtype)."""
        return self._handles[self.names[name]].get_tensor(name)

    def where(self, name: str) -> str:
        return f"{self.names[name]}: tensor {name!r}"

    def __exit__(self, *exc):
        self._stack.close()
        return None


def _read_json_object(path: Path) -> dict:
    """The JSON object in ``path``; CheckpointError naming the file when it is not one."""
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: the top level must be a JSON object, got {type(data).__name__}")
    return data


def write_sharded(
    path: Path,
    entries: Iterable[tuple[str, tuple[int, ...], int]],
    produce: Callable[[str], np.ndarray],
    max_shard_bytes: int,
) -> list[Path]:
    """Write tensors into ``path`` (an existing empty directory): ``entries`` are (name, shape,
    itemsize) in order, ``produce(name)`` returns the array. One file ``model.safetensors`` when all
    fit in ``max_shard_bytes``, else numbered shards plus the index. Returns the files written."""
    shards: list[list[str]] = [[]]
    sizes = [0]
    total = 0
    for name, shape, itemsize in entries:
        nbytes = int(np.prod(shape, dtype=np.int64)) * itemsize
        if shards[-1] and sizes[-1] + nbytes > max_shard_bytes:
            shards.append([])
            sizes.append(0)
        shards[-1].append(name)
        sizes[-1] += nbytes
        total += nbytes
    count = len(shards)
    files = [
        path / (SINGLE_FILE if count == 1 else f"model-{i + 1:05d}-of-{count:05d}.safetensors") for i in range(count)
    ]
    for file, names in zip(files, shards):
        save_file({name: np.ascontiguousarray(produce(name)) for name in names}, str(file), metadata=METADATA)
    if count > 1:
        weight_map = {name: file.name for file, names in zip(files, shards) for name in names}
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (path / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
        files.append(path / INDEX_FILE)
    return files
