"""Version shims for jax-triton / Triton, nothing else.

jax-triton 0.4.1 reads ``triton.backends.nvidia.driver.TMA_TF32``, which Triton 3.6.0 lacks (newer
Triton defines it as 11). Without it jax-triton silently falls back to stub classes and fails at the
first launch, so the constant is set before jax_triton is imported.
"""

from __future__ import annotations

import functools

TMA_TF32_VALUE = 11


@functools.cache
def import_jax_triton():
    """Imports and returns ``jax_triton`` with the Triton shim applied; raises ImportError if absent."""
    import triton.backends.nvidia.driver as nvidia_driver

    if not hasattr(nvidia_driver, "TMA_TF32"):
        nvidia_driver.TMA_TF32 = TMA_TF32_VALUE
    import jax_triton

    return jax_triton
