"""The check shared by the interpreter and GPU tests of ``"step--triton"``: STEPS chained steps from a
random state against the float64 reference of the same sequence (tests/reference.py); every h and the last
(c, n, m) within a tolerance of the largest reference value."""

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.timing import mlstm_inputs
from tests.reference import mlstm_reference
from xlstm_flax.kernels import get_kernel

STEPS, STATE_TOL = 8, 1e-5


def _random_state(B, NH, K, V, seed):
    keys = jax.random.split(jax.random.key(seed), 3)
    c = jax.random.normal(keys[0], (B, NH, K, V), jnp.float32)
    n = jax.random.normal(keys[1], (B, NH, K), jnp.float32)
    m = jax.random.normal(keys[2], (B, NH), jnp.float32)
    return c, n, m


def _close(name, got, want, tol):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    err, scale = np.max(np.abs(got - want)), max(1.0, np.max(np.abs(want)))
    assert err <= tol * scale, f"{name}: {err:.3g} > {tol} * {scale:.3g}"


def check_chained_steps(dims, dtype, h_tol: float, kernel: str = "step--triton") -> None:
    """dims (B, NH, DHQK, DHV); q/k/v in ``dtype``, fp32 gates and states."""
    B, NH, K, V = dims
    q, k, v, i, f, _ = mlstm_inputs((B, NH, STEPS, K, V), dtype, seed=K + V)
    initial = _random_state(B, NH, K, V, seed=V)
    step, state, hs = jax.jit(get_kernel(kernel)), initial, []
    for t in range(STEPS):
        h, state = step(q[:, :, t], k[:, :, t], v[:, :, t], i[:, :, t], f[:, :, t], *state)
        assert h.dtype == dtype and all(s.dtype == jnp.float32 for s in state)
        hs.append(h)
    with jax.enable_x64():
        h_ref, _, _, last_ref = mlstm_reference(q, k, v, i, f, *initial)
    _close("h", jnp.stack(hs, axis=2), h_ref, h_tol)
    for name, got, want in zip("cnm", state, last_ref):
        _close(name, got, want, STATE_TOL)
