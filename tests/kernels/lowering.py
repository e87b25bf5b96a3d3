"""Helpers of the CUDA-lowering tests (docs/testing.md): lower a jitted function for CUDA on this CPU
machine and read the PTX of its Triton calls."""

from __future__ import annotations

import os

import jax
import pytest

from benchmarks.gpu_hlo import TRITON_OPAQUE, triton_payload
from xlstm_flax.kernels.triton import compat


def skip_module_unless_lowerable() -> None:
    """Skips the calling test module without jax-triton or under Triton's interpreter."""
    try:
        compat.import_jax_triton()
    except ImportError as err:  # pragma: no cover - depends on the environment
        pytest.skip(f"jax_triton not importable: {err}", allow_module_level=True)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        pytest.skip("compile tests need compiled (not interpreted) Triton kernels", allow_module_level=True)


def lowered_triton_calls(fn, *args) -> list[bytes]:
    """Lowers ``jax.jit(fn)`` for CUDA; returns the decompressed payload of every Triton call."""
    text = jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
    assert "triton_kernel_call" in text, "the lowering holds no Triton kernel call"
    return [triton_payload(p) for p in TRITON_OPAQUE.findall(text)]


def assert_compiled_for_sm90(payloads: list[bytes], names: tuple[bytes, ...]) -> None:
    """Each named kernel appears in exactly one call whose PTX targets sm_90a and uses tensor cores."""
    for name in names:
        calls = [p for p in payloads if name in p]
        assert len(calls) == 1, f"{name.decode()} in {len(calls)} lowered calls, expected 1"
        assert b".target sm_90a" in calls[0], f"{name.decode()}: PTX not for sm_90a"
        assert b"mma" in calls[0], f"{name.decode()}: no tensor-core instruction in the PTX"
