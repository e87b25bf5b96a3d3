"""Shims for jax-triton / Triton, nothing else.

* jax-triton 0.4.1 reads ``triton.backends.nvidia.driver.TMA_TF32``, which Triton 3.6.0 lacks (newer
  Triton defines it as 11). Without it jax-triton silently falls back to stub classes and fails at the
  first launch, so the constant is set before jax_triton is imported.
* jax-triton's dead-code rule keeps every kernel call in a jaxpr, even one whose outputs nothing reads.
  Under ``jax.checkpoint`` the recomputed forward of a block then keeps the Triton forward kernels whose
  results the policy saved; XLA drops such calls at the top level but not inside the while loop of a
  scanned stack, where they ran a second time (``docs/performance.md``, Models). The rule here drops a
  call none of whose outputs is used unless it has effects (mutable ref operands), as JAX does for its
  own primitives.
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
    from jax._src.interpreters import partial_eval  # dce_rules: not in JAX's public API

    partial_eval.dce_rules[jax_triton.triton_lib.triton_kernel_call_p] = _drop_if_unused
    return jax_triton


def _drop_if_unused(used_outputs: list[bool], eqn):
    """JAX dead-code rule for a Triton kernel call: (inputs used, the equation or None when it can go)."""
    if any(used_outputs) or eqn.effects:
        return [True] * len(eqn.invars), eqn
    return [False] * len(eqn.invars), None
