"""Makes Triton 3.6.0's interpreter run kernels on host numpy buffers (docs/testing.md).

Everything here touches private interpreter API, which is why it lives in tests/ and triton is
pinned. :func:`install` applies the patches and hands :func:`run_interpreted` to the library's
launcher (``launch.set_interpreter_runner``):

* numpy buffers are host memory already, so the interpreter's copy to/from the host (done through
  torch's storage API, absent here) becomes a pass-through;
* bf16 ``tl.dot`` operands are stored as raw uint16 bits and would be multiplied as integers: they are
  widened to fp32 first;
* the interpreter's fp32 -> bf16 casts truncate; they round to nearest even instead, like the GPU's
  (a truncated h moved the sLSTM gates by a bf16 ulp and flipped the stabiliser's max near ties);
* an autotuned kernel fails with several configs ("0 active drivers"): every config is run and its
  outputs must agree with the first config's;
* one kernel at a time: XLA's CPU runtime may run independent callbacks on several threads at once,
  and the interpreter patches ``triton.language`` globally while a kernel runs (two at once failed with
  "Did you forget to add @triton.jit ?").
"""

from __future__ import annotations

import threading

import ml_dtypes
import numpy as np
import triton
import triton.language as tl
from triton.runtime import interpreter

from xlstm_flax.kernels.triton import launch

# Autotune configs differ only in summation order; a wrong config differs by far more than this.
AUTOTUNE_RTOL, AUTOTUNE_ATOL = 1e-2, 1e-3
_ONE_KERNEL_AT_A_TIME = threading.Lock()


class HostPointer:
    """What the interpreter needs from a pointer argument: ``data_ptr()`` and ``dtype``."""

    def __init__(self, array: np.ndarray):
        assert array.flags.c_contiguous, "kernels index buffers as C-contiguous"
        self.array = array
        self.dtype = array.dtype

    def data_ptr(self) -> int:
        return self.array.ctypes.data


def _args_pass_through(self, args_dev, kwargs):
    return list(args_dev), dict(kwargs)


def _restore_nothing(self, args_dev, args_hst, kwargs, kwargs_hst):
    return None


_original_create_dot = interpreter.InterpreterBuilder.create_dot


def _widen_bf16(handle):
    if handle.dtype.scalar != tl.bfloat16:
        return handle
    widened = (handle.data.astype(np.uint32) << 16).view(np.float32)
    return interpreter.TensorHandle(widened, tl.float32)


def _create_dot_widening_bf16(self, a, b, d, input_precision, max_num_imprecise_acc):
    return _original_create_dot(self, _widen_bf16(a), _widen_bf16(b), d, input_precision, max_num_imprecise_acc)


_original_cast = interpreter.InterpreterBuilder.cast_impl


def _cast_rounding_bf16_to_nearest(self, src, dst_type):
    if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
        rounded = src.data.astype(ml_dtypes.bfloat16).view(np.uint16)
        return interpreter.TensorHandle(rounded, tl.bfloat16)
    return _original_cast(self, src, dst_type)


def install() -> None:
    """Patches the interpreter (idempotent) and installs the runner into the launcher."""
    interpreter.GridExecutor._init_args_hst = _args_pass_through
    interpreter.GridExecutor._restore_args_dev = _restore_nothing
    interpreter.InterpreterBuilder.create_dot = _create_dot_widening_bf16
    interpreter.InterpreterBuilder.cast_impl = _cast_rounding_bf16_to_nearest
    launch.set_interpreter_runner(run_interpreted)


def run_interpreted(kernel, grid, inputs, outputs, meta) -> None:
    """``kernel[grid](*inputs, *outputs, **meta)`` on host buffers; outputs are written in place."""
    with _ONE_KERNEL_AT_A_TIME:
        if isinstance(kernel, triton.runtime.Autotuner):
            _run_every_config(kernel, grid, inputs, outputs, meta)
        else:
            kernel[grid](*(HostPointer(x) for x in (*inputs, *outputs)), **meta)


def _run_every_config(tuner, grid, inputs, outputs, meta) -> None:
    reference = None
    for config in tuner.configs:
        trial = [np.full_like(out, np.nan) for out in outputs]
        options = dict(meta, **config.all_kwargs())
        tuner.fn[grid](*(HostPointer(x) for x in (*inputs, *trial)), **options)
        if reference is None:
            reference = trial
            continue
        for k, (got, want) in enumerate(zip(trial, reference)):
            np.testing.assert_allclose(
                np.asarray(got, np.float64),
                np.asarray(want, np.float64),
                rtol=AUTOTUNE_RTOL,
                atol=AUTOTUNE_ATOL,
                err_msg=f"autotune config {config} disagrees with the first on output {k}",
            )
    for out, result in zip(outputs, reference):
        out[...] = result
