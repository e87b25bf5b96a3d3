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
kernel is compiled as without it. Kernels with TMA tensor descriptors (none in the library; the experiment
benchmarks/states_tma.py launches some) are not stored;
entries keep the PTX, not the intermediate IRs (only ``JAX_TRITON_DUMP_DIR`` dumps want those, and
with it set the cache is bypassed). The key also holds every ``TRITON_*`` environment setting (ptxas
path, instrumentation). The wrapper serves every jax-triton kernel of the process, not only this
library's; nothing is evicted (delete the directory to reclaim it).
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
    where = os.environ.get(LOCATION) or DEFAULT_DIR
    return None if where == "off" else Path(where).expanduser()


def install(triton_lib, jax_triton_version: str) -> None:
    """Wraps ``triton_lib.compile_ttir_inplace`` (jax_triton.triton_lib) with the disk cache, once."""
    if getattr(triton_lib.compile_ttir_inplace, "disk_cached", False):
        return
    compile_uncached = triton_lib.compile_ttir_inplace
    versions = f"triton {triton.__version__}, jax-triton {jax_triton_version}"

    def compile_ttir_inplace(ttir, backend, options, gpu_target):
        folder = cache_dir()
        # HIP's result names a temporary file; jax-triton's dumps want the intermediate IRs, not stored
        if folder is None or gpu_target.backend != "cuda" or os.environ.get("JAX_TRITON_DUMP_DIR"):
            return compile_uncached(ttir, backend, options, gpu_target)
        knobs = sorted((k, v) for k, v in os.environ.items() if k.startswith("TRITON_"))  # ptxas, instrumentation
        parts = (versions, repr(knobs), repr(gpu_target), repr(options), str(ttir))
        entry = folder / f"{hashlib.sha256(chr(10).join(parts).encode()).hexdigest()}.json"
        try:
            return triton_lib.CompilationResult(**json.loads(entry.read_text()))
        except (OSError, ValueError, TypeError):  # none stored, or unreadable
            pass
        result = compile_uncached(ttir, backend, options, gpu_target)
        if not result.tensordesc_meta:  # TMA descriptor metadata might not survive JSON: not cached
            _write(entry, dataclasses.asdict(dataclasses.replace(result, ttgir="", llir="")))
        return result

    compile_ttir_inplace.disk_cached = True
    triton_lib.compile_ttir_inplace = compile_ttir_inplace


def _write(entry: Path, compilation: dict) -> None:
    """Stores ``compilation`` under a temporary name, then renames it (atomic); gives up on OSError."""
    temporary = None
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=entry.parent, suffix=".tmp", delete=False) as file:
            temporary = file.name
            json.dump(compilation, file)
        os.replace(temporary, entry)
    except OSError:  # a read-only or full disk: compile again next time
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)
