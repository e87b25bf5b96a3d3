"""benchmarks/states_ws.py (the warp-specialised chunk-state walk experiment) lowers for CUDA on this CPU
machine, all seven walks and XLA's gate preparation at its tiny shape; and the prepared gates give the
states of the library walk's gate formula (``_chunk_gates``). Each in a process of its own (the script
patches jax-triton at import)."""

import os
import pathlib
import subprocess
import sys

from tests.kernels.lowering import skip_module_unless_lowerable

skip_module_unless_lowerable()

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = dict(os.environ, TINY="1", JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))

# The chunk recurrence in jnp from the prepared gates and from _chunk_gates' formulas (fp32, random gates,
# a random initial stabiliser): the largest difference of any chunk's state, relative to the largest state.
CHECK = """
import jax, jax.numpy as jnp
from benchmarks import states_ws as W
T = W.T
k, v, vecB, i, C0, m0 = T.inputs()
m0 = jax.random.normal(jax.random.key(5), m0.shape)
w, decay, _ = W.prepared_gates(vecB, i, m0)
chunks = T.S // T.L_INTER
w = w.reshape(T.B, T.NH, chunks, T.L_INTER)
decay = decay.reshape(chunks, T.B, T.NH, T.BV)[..., 0]
k, v = k.astype(jnp.float32), v.astype(jnp.float32)
C_ref, C, m, worst, largest = C0, C0, m0, 0.0, 0.0
for c in range(chunks):
    t = slice(c * T.L_INTER, (c + 1) * T.L_INTER)
    b = vecB[..., t]
    b_prev = vecB[..., t.start - 1] if t.start % T.L_INTRA else 0.0
    a = i[..., t] + b[..., -1:] - b
    carry = b[..., -1] - b_prev + m
    m = jnp.maximum(carry, a.max(-1))
    update = lambda weights: jnp.einsum("bhtk,bht,bhtv->bhkv", k[..., t, :], weights, v[..., t, :])
    C_ref = jnp.exp(carry - m)[..., None, None] * C_ref + update(jnp.exp(a - m[..., None]))
    C = decay[c][..., None, None] * C + update(w[:, :, c])
    worst = max(worst, float(jnp.max(jnp.abs(C - C_ref))))
    largest = max(largest, float(jnp.max(jnp.abs(C_ref))))
print(worst / largest)
"""


def test_every_variant_lowers_for_cuda():
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "states_ws.py")],
        env=dict(ENV, LOWER="1"),
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    lowered = [line for line in run.stdout.splitlines() if " lowered: " in line]
    assert len(lowered) == 8, run.stdout


def test_prepared_gates_give_the_library_walks_states():
    run = subprocess.run([sys.executable, "-c", CHECK], env=ENV, capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
    relative_error = float(run.stdout.split()[-1])
    assert relative_error <= 1e-6, relative_error  # the same fp32 operations in another order: rounding only
