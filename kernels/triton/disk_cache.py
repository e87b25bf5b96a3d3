"""jax-triton's kernel compilations kept on disk across processes.

jax-triton compiles a kernel (TTIR -> PTX, Triton's LLVM pipeline) whenever a function that launches it
is lowered, and keeps the result in memory only. Every new process therefore compiles every kernel
again, also when JAX's persistent compilation cache then finds the whole XLA program: lowering the
7B-dims forward + backward of ``chunkwise--triton`` spends about 80% of its time there (CPU machine).
:func:`install` wraps jax-triton's ``compile_ttir_inplace`` so that each compilation is stored once and
read back by later processes. The key is everything the PTX depends on: the TTIR text (the kernel after
specialisation: its constants, argument dtypes and alignments), the compiler options (warps, stages,
...), the target and the Triton and jax-triton versions.

Where: ``XLSTM_FLAX_TRITON_CACHE`` (a directory, or ``off``), default ``~/.cache/xlstm_flax/triton``.
(Triton's own cache manager cannot be pointed elsewhere: jax-triton deletes ``TRITON_CACHE_DIR`` from
the environment when it is imported.) Each entry is one JSON file, written to a temporary name and
renamed, so a reader never sees half of one. A cache that cannot be read or written is skipped: the
kernel is compiled as without it. Kernels with TMA tensor descriptors (none here yet) are not stored.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path

import triton

LOCATION = "XLSTM_FLAX_TRITON_CACHE"
DEFAULT_DIR = "~/.cache/xlstm_flax/triton"


def cache_dir() -> Path | None:
    """The cache directory, or None when ``XLSTM_FLAX_TRITON_CACHE=off``."""
    where = os.environ.get(LOCATION, DEFAULT_DIR)
    return None if where == "off" else Path(where).expanduser()


def install(triton_lib, jax_triton_version: str) -> None:
    """Wraps ``triton_lib.compile_ttir_inplace`` (jax_triton.triton_lib) with the disk cache, once."""
    if getattr(triton_lib.compile_ttir_inplace, "disk_cached", False):
        return
    compile_uncached = triton_lib.compile_ttir_inplace
    versions = f"triton {triton.__version__}, jax-triton {jax_triton_version}"

    def compile_ttir_inplace(ttir, backend, options, gpu_target):
        folder = cache_dir()
        if folder is None or gpu_target.backend != "cuda":  # HIP's result names a temporary file
            return compile_uncached(ttir, backend, options, gpu_target)
        key = hashlib.sha256("\n".join((versions, repr(gpu_target), repr(options), str(ttir))).encode()).hexdigest()
        entry = folder / f"{key}.json"
        stored = _read(entry)
        if stored is not None:
            return triton_lib.CompilationResult(**stored)
        result = compile_uncached(ttir, backend, options, gpu_target)
        if not result.tensordesc_meta:  # TMA descriptor metadata might not survive JSON: not cached
            _write(entry, dataclasses.asdict(result))
        return result

    compile_ttir_inplace.disk_cached = True
    triton_lib.compile_ttir_inplace = compile_ttir_inplace


def _read(entry: Path) -> dict | None:
    """The stored compilation, or None (none stored, or unreadable)."""
    try:
        return json.loads(entry.read_text())
    except (OSError, ValueError):
        return None


def _write(entry: Path, compilation: dict) -> None:
    """Stores ``compilation`` under a temporary name, then renames it (atomic); gives up on OSError."""
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=entry.parent, suffix=".tmp", delete=False) as file:
            json.dump(compilation, file)
        os.replace(file.name, entry)
    except OSError:
        pass  # a read-only or full disk: compile again next time
