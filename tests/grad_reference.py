"""Float64 reference gradients for kernel backward tests: autodiff of ``tests.reference.mlstm_reference``
for a random linear loss on raw h and, optionally, on the returned last states (c, n, m).

Input dicts are those of ``tests.reference.random_inputs`` (q, k, v, i, f and optionally c_initial,
n_initial, m_initial); gradients are returned for all eight, zeros standing in for absent states.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from tests.reference import mlstm_reference

GRAD_NAMES = ("q", "k", "v", "i", "f", "c_initial", "n_initial", "m_initial")


def random_cotangents(key, x: dict, last_states: bool) -> dict:
    """Fresh normal weights of the linear loss: ``h`` always, ``c``, ``n``, ``m`` when ``last_states``."""
    B, NH, S, DHQK = x["q"].shape
    DHV = x["v"].shape[-1]
    ks = jax.random.split(key, 4)
    cot = {"h": jax.random.normal(ks[0], (B, NH, S, DHV), jnp.float32)}
    if last_states:
        cot["c"] = jax.random.normal(ks[1], (B, NH, DHQK, DHV), jnp.float32)
        cot["n"] = jax.random.normal(ks[2], (B, NH, DHQK), jnp.float32)
        cot["m"] = jax.random.normal(ks[3], (B, NH), jnp.float32)
    return cot


def _with_states(x: dict) -> list:
    B, NH, _, DHQK = x["q"].shape
    DHV = x["v"].shape[-1]
    zeros = {"c_initial": (B, NH, DHQK, DHV), "n_initial": (B, NH, DHQK), "m_initial": (B, NH)}
    return [np.asarray(x[n], np.float64) if x.get(n) is not None else np.zeros(zeros[n]) for n in GRAD_NAMES]


def linear_loss(h, last_states, cot: dict):
    """sum(h * cot_h) (+ sum over the last states times their weights), in h's precision."""
    loss = jnp.sum(h * cot["h"].astype(h.dtype))
    if "c" in cot:
        for state, name in zip(last_states, ("c", "n", "m")):
            loss = loss + jnp.sum(state * cot[name].astype(state.dtype))
    return loss


@functools.partial(jax.jit, static_argnames=("qk_scale", "eps", "segment_ids"))
def _reference_grads(args, cot, qk_scale, eps, segment_ids):
    def loss(*args):
        ids = None if segment_ids is None else np.array(segment_ids)
        h, _, _, last = mlstm_reference(*args, qk_scale=qk_scale, eps=eps, segment_ids=ids)
        return linear_loss(h, last, cot)

    return jax.grad(loss, argnums=tuple(range(8)))(*args)


def reference_gradients(x: dict, cot: dict, qk_scale=None, eps=1e-6, segment_ids=None) -> dict:
    """float64 gradients of :func:`linear_loss` w.r.t. the eight inputs, by name (``segment_ids``: (B, S)
    document ids, see tests/reference.py)."""
    ids = None if segment_ids is None else tuple(map(tuple, np.asarray(segment_ids).tolist()))
    with jax.enable_x64():
        cot64 = {n: jnp.asarray(c, jnp.float64) for n, c in cot.items()}
        grads = _reference_grads(tuple(jnp.asarray(a) for a in _with_states(x)), cot64, qk_scale, eps, ids)
        return {n: np.asarray(g) for n, g in zip(GRAD_NAMES, grads)}


def relative_error(got, want) -> float:
    """||got - want|| / ||want|| (Frobenius), in float64."""
    got = np.asarray(jnp.asarray(got, jnp.float32), np.float64)
    want = np.asarray(want, np.float64)
    assert got.shape == want.shape, f"shape {got.shape} != {want.shape}"
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30))
