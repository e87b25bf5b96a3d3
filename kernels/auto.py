"""What ``get_kernel("auto")`` runs where ``chunkwise--triton`` can run: per call, the backend that a GPU
run measured faster for forward+backward at the call's shape (docs/kernels.md section 4).

:data:`JAX_FASTER` lists head dims and a size from which ``chunkwise--jax`` beat ``chunkwise--triton``
(bf16, H200, benchmarks/results/h200_kernels_2026-12-02.md); every other shape runs the Triton kernel.
The choice is made from the static shapes at trace time, so it costs nothing per step.
"""

from __future__ import annotations

from typing import NamedTuple

from . import registry


class JaxFaster(NamedTuple):
    """``chunkwise--jax`` is picked for q of head dims (DHQK, DHV) once B * NH * S >= ``min_head_steps``."""

    DHQK: int
    DHV: int
    min_head_steps: int


# xLSTM-7B head dims: chunkwise--jax was faster in forward+backward at every measured size, B x NH x S =
# 1x8x8192, 32x8x2048 and 8x8x8192 (65536 head-steps and more); smaller sizes were not measured.
JAX_FASTER = (JaxFaster(256, 512, 1 * 8 * 8192),)


def preferred_kernel(B: int, NH: int, S: int, DHQK: int, DHV: int) -> str:
    """The registry name that "auto" runs for q (B, NH, S, DHQK), v (..., DHV) on a Triton-capable GPU."""
    for entry in JAX_FASTER:
        if (DHQK, DHV) == (entry.DHQK, entry.DHV) and B * NH * S >= entry.min_head_steps:
            return registry.FALLBACK_KERNEL
    return registry.TRITON_KERNEL


def auto_chunkwise(q, k, v, i, f, **kwargs):
    """The sequence-kernel calling convention (docs/kernels.md) through :func:`preferred_kernel`'s backend.
    Takes the convention's keywords only (no backend-specific tuning options)."""
    B, NH, S, DHQK = q.shape
    name = preferred_kernel(B, NH, S, DHQK, v.shape[-1])
    return registry.get_kernel(name)(q, k, v, i, f, **kwargs)
