"""The launcher's outputs pass through an optimisation barrier (kernels/triton/launch.py): lowered for CUDA
on the CPU machine, a ``lax.scan`` that stacks a Triton forward's outputs (as a scanned block stack stacks
its residuals) reads every Triton call's results only through ``stablehlo.optimization_barrier``. Without
the barrier XLA's GPU dynamic-slice fusion cloned such a call into a fusion that writes the stack in place,
and the kernel ran twice per step (docs/performance.md, Models)."""

import re

import jax
import jax.numpy as jnp

from tests.kernels.lowering import skip_module_unless_lowerable

skip_module_unless_lowerable()

from xlstm_flax.kernels.triton import launch, mlstm_chunkwise_fw  # noqa: E402


def stacked_forward(q, k, v, i, f):
    """Two scan steps of the forward; h, den and m stacked along a leading axis of 2."""

    def body(carry, scale):
        h, den, m, _, _ = mlstm_chunkwise_fw(q * scale, k, v, i, f)
        return carry + h.sum(), (h, den, m)

    return jax.lax.scan(body, jnp.zeros((), jnp.float32), jnp.array([1.0, 0.5], q.dtype))


def test_stacked_triton_outputs_are_read_through_a_barrier(monkeypatch):
    monkeypatch.setattr(launch, "require_triton_backend", lambda *args: None)
    qk = jax.ShapeDtypeStruct((1, 2, 64, 32), jnp.bfloat16)
    gates = jax.ShapeDtypeStruct((1, 2, 64), jnp.float32)
    v = jax.ShapeDtypeStruct((1, 2, 64, 64), jnp.bfloat16)
    text = jax.jit(stacked_forward).trace(qk, qk, v, gates, gates).lower(lowering_platforms=("cuda",)).as_text()
    results = re.findall(r"^\s*(%[\w#]+)(?::\d+)? = stablehlo\.custom_call @triton_kernel_call", text, re.MULTILINE)
    assert len(results) == 2, f"expected the states and parallel kernels, found {len(results)} Triton calls"
    for name in results:
        readers = [
            line
            for line in text.splitlines()
            if re.search(rf"{re.escape(name)}(#\d+)?\b", line) and not line.lstrip().startswith(f"{name}:")
        ]
        assert readers, f"{name}: its results are never read"
        assert all("stablehlo.optimization_barrier" in line for line in readers), (name, readers)
