"""One launcher for every Triton kernel of the library, with jax-triton's calling convention.

``triton_call(*inputs, kernel, out_shape, grid, num_warps, num_stages, **constexprs)`` passes the
input arrays, then one pointer per output (in ``out_shape`` order), then the keywords, to the kernel
and returns the output arrays (a single array when ``out_shape`` is a single shape).

* ``zeroed_outputs``: indices (into the flattened ``out_shape``) of outputs set to zero before the
  launch (jax-triton's option of that name), e.g. counters the kernel increments.
* Normally it calls ``jax_triton.triton_call``. Without a GPU visible to JAX it compiles for sm_90
  (``compute_capability=90``), which is what lowering for CUDA on a CPU machine needs. Compilations
  are kept on disk across processes (disk_cache.py). A compiled kernel that needs more shared memory
  than one block may use on its target (:data:`MAX_SHARED_MEMORY`) is a ``ValueError`` when the
  calling function is lowered, before anything runs (the GPU would refuse the launch).
* The outputs pass through ``jax.lax.optimization_barrier``. Without it, XLA's GPU dynamic-slice fusion
  rewriter clones a call whose outputs are also written into a slice of a larger buffer (a ``lax.scan``
  stacking them, e.g. the residuals of a scanned block stack) into a fusion that writes them in place, and
  the kernel runs twice (docs/performance.md, Models).
* Under Triton's interpreter (``TRITON_INTERPRET=1``, set before any kernel is defined) jax-triton
  cannot launch the interpreted kernel. The launcher then runs it on host numpy buffers inside
  ``jax.pure_callback`` (so it also works under ``jax.jit``) through a runner installed with
  :func:`set_interpreter_runner`. The runner owns whatever the interpreter needs to accept numpy
  buffers; the test harness (``tests/triton_interpret/``) installs one. Outputs start as NaN there,
  so an element the kernel forgets to write shows up in a test.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence
from typing import Protocol

import jax
import numpy as np
import triton

from . import compat, disk_cache

HOPPER_COMPUTE_CAPABILITY = 90
# Shared memory one thread block may use (the opt-in maximum), bytes, by compute capability (CUDA C++
# Programming Guide, technical specifications per compute capability). Other targets are not checked.
MAX_SHARED_MEMORY = {80: 166912, 86: 101376, 87: 166912, 89: 101376, 90: 232448, 100: 232448, 120: 101376}


class InterpreterRunner(Protocol):
    def __call__(
        self, kernel, grid: tuple[int, ...], inputs: Sequence[np.ndarray], outputs: Sequence[np.ndarray], meta: dict
    ) -> None:
        """Runs ``kernel[grid](*inputs, *outputs, **meta)`` in place on host buffers."""


_interpreter_runner: InterpreterRunner | None = None


def set_interpreter_runner(runner: InterpreterRunner | None) -> None:
    """Installs (or removes, with None) the function that launches interpreted kernels."""
    global _interpreter_runner
    _interpreter_runner = runner


def interpreter_enabled() -> bool:
    """True when Triton runs kernels in its interpreter (``TRITON_INTERPRET=1``)."""
    return bool(triton.knobs.runtime.interpret)


@functools.cache
def gpu_visible() -> bool:
    """True when JAX sees a GPU."""
    try:
        return bool(jax.devices("gpu"))
    except RuntimeError:
        return False


@functools.cache
def _jax_triton():
    """``jax_triton`` with its compilations cached on disk (disk_cache.py) and checked against the target's
    shared memory."""
    jax_triton = compat.import_jax_triton()
    disk_cache.install(jax_triton.triton_lib, jax_triton.__version__)
    _check_shared_memory_after_compiling(jax_triton.triton_lib)
    return jax_triton


def _check_shared_memory_after_compiling(triton_lib) -> None:
    """Wraps ``triton_lib.compile_ttir_inplace`` (over the disk cache, so cached kernels are checked too; once,
    from :func:`_jax_triton`): a kernel needing more shared memory than its target's :data:`MAX_SHARED_MEMORY`
    raises ValueError."""
    compile_unchecked = triton_lib.compile_ttir_inplace

    def compile_ttir_inplace(ttir, backend, options, gpu_target):
        result = compile_unchecked(ttir, backend, options, gpu_target)
        limit = MAX_SHARED_MEMORY.get(gpu_target.arch) if gpu_target.backend == "cuda" else None
        if limit is not None and result.shared_mem_bytes > limit:
            raise ValueError(
                f"Triton kernel {result.name} needs {result.shared_mem_bytes} bytes of shared memory with "
                f"num_warps={options.num_warps}, num_stages={options.num_stages}; sm_{gpu_target.arch} allows "
                f"{limit} per block: use smaller block sizes or fewer stages in the kernel's tuning options"
            )
        return result

    triton_lib.compile_ttir_inplace = compile_ttir_inplace


def triton_call(
    *inputs: jax.Array,
    kernel,
    out_shape,
    grid: tuple[int, ...] | Callable,
    num_warps: int = 4,
    num_stages: int = 3,
    zeroed_outputs: tuple[int, ...] = (),
    **constexprs,
):
    """Launches ``kernel`` over ``grid`` on ``inputs``; returns arrays shaped like ``out_shape``."""
    if interpreter_enabled():
        return _call_interpreted(inputs, kernel, out_shape, grid, num_warps, num_stages, zeroed_outputs, constexprs)
    jax_triton = _jax_triton()
    if zeroed_outputs:
        constexprs = dict(constexprs, zeroed_outputs=tuple(zeroed_outputs))
    with warnings.catch_warnings():  # jax-triton 0.4 marks zeroed_outputs deprecated (in favour of Refs)
        warnings.filterwarnings("ignore", "zeroed_outputs is deprecated", DeprecationWarning)
        outputs = jax_triton.triton_call(
            *inputs,
            kernel=kernel,
            out_type=out_shape,
            grid=grid,
            num_warps=num_warps,
            num_stages=num_stages,
            compute_capability=None if gpu_visible() else HOPPER_COMPUTE_CAPABILITY,
            **constexprs,
        )
    return jax.lax.optimization_barrier(outputs)  # see the module docstring: one launch per call


def _call_interpreted(inputs, kernel, out_shape, grid, num_warps, num_stages, zeroed_outputs, constexprs):
    if _interpreter_runner is None:
        raise RuntimeError(
            "TRITON_INTERPRET=1 but no interpreter runner is installed: call "
            "xlstm_flax.kernels.triton.launch.set_interpreter_runner(...) first "
            "(tests/triton_interpret/conftest.py installs one)"
        )
    runner = _interpreter_runner
    shapes, treedef = jax.tree.flatten(out_shape)
    meta = dict(constexprs, num_warps=num_warps, num_stages=num_stages)
    grid = tuple(grid(meta)) if callable(grid) else tuple(np.atleast_1d(grid).tolist())

    def run_on_host(*host_inputs):
        outputs = [
            np.zeros(s.shape, s.dtype) if k in zeroed_outputs else np.full(s.shape, np.nan, s.dtype)
            for k, s in enumerate(shapes)
        ]
        runner(kernel, grid, [np.ascontiguousarray(x) for x in host_inputs], outputs, meta)
        return outputs

    shapes = [jax.ShapeDtypeStruct(s.shape, s.dtype) for s in shapes]
    return jax.tree.unflatten(treedef, jax.pure_callback(run_on_host, shapes, *inputs))


def require_triton_backend(kernel_name: str, fallback: str) -> None:
    """Raises (ImportError / RuntimeError naming ``kernel_name`` and ``fallback``) unless jax-triton imports
    and JAX sees a GPU; passes under the interpreter."""
    if interpreter_enabled():
        return
    try:
        compat.import_jax_triton()
    except ImportError as err:
        raise ImportError(f"{kernel_name} needs jax-triton ({err}); use kernel={fallback!r}") from err
    if not gpu_visible():
        raise RuntimeError(f"{kernel_name} needs a CUDA GPU visible to JAX; use kernel={fallback!r}")
