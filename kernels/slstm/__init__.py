"""sLSTM kernel backends behind one calling convention, in their own registry (separate from the mLSTM
kernels' so that neither config accepts the other's names)::

    h, last = kernel(gates, bias, recurrent_kernel, initial=None, **impl_options)

    gates: GateInputs(i, f, z, o), the gates' input projections, each (B, S, NH, DH), one float dtype
    bias: (4, NH, DH) fp32; a gate's pre-activation input part is gate + bias, in fp32
    recurrent_kernel: (4, NH, DH, DH), head-wise R; the product h_{t-1} R takes h in R's dtype
    initial / last: States(c, n, m, h), each (B, NH, DH) fp32 (None: zeros, m = M_INITIAL)
    returns h (B, S, NH, DH) fp32 and the state after the last step.

Names: ``"recurrent--jax"`` (lax.scan, the reference) and ``"recurrent--triton"`` (fused Triton
forward and backward); ``"auto"`` is the Triton kernel where it can run (a CUDA GPU with jax-triton),
else the scan: on an H200 the Triton kernel at its defaults ran the B=16, S=2048, 4x256-head
recurrence's forward+backward 7.1x faster than the scan (12.8 against 91.2 ms; 2.8x in its first
version; benchmarks/results/h200_session14_2026-12-04.md).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from ..registry import AUTO, triton_usable
from .common import M_INITIAL, NUM_GATES, GateInputs, States, gate_preactivations, initial_states

FALLBACK_KERNEL = "recurrent--jax"
TRITON_KERNEL = "recurrent--triton"
_KERNELS = {
    FALLBACK_KERNEL: "xlstm_flax.kernels.slstm.reference:slstm_scan",
    TRITON_KERNEL: "xlstm_flax.kernels.slstm.autograd:slstm_triton",
}


def available_slstm_kernels() -> list[str]:
    return sorted(_KERNELS)


def resolve_slstm_kernel_name(name: str) -> str:
    """Maps ``"auto"`` to the Triton kernel where it can run, else the scan (see the module docstring);
    checks other names (ValueError listing the valid ones)."""
    if name == AUTO:
        return TRITON_KERNEL if triton_usable() else FALLBACK_KERNEL
    if name not in _KERNELS:
        raise ValueError(
            f"unknown sLSTM kernel {name!r}; available: {', '.join(available_slstm_kernels())} (or 'auto')"
        )
    return name


def get_slstm_kernel(name: str) -> Callable:
    """The sLSTM kernel registered under ``name`` (``"auto"``: see :func:`resolve_slstm_kernel_name`)."""
    module_name, attr = _KERNELS[resolve_slstm_kernel_name(name)].split(":")
    return getattr(importlib.import_module(module_name), attr)


__all__ = [
    "M_INITIAL",
    "NUM_GATES",
    "GateInputs",
    "States",
    "available_slstm_kernels",
    "gate_preactivations",
    "get_slstm_kernel",
    "initial_states",
    "resolve_slstm_kernel_name",
]
