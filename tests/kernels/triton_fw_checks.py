"""Checks of the Triton forward against the float64 reference (tests/reference.py), shared by the
interpreter tests (tests/triton_interpret) and the GPU tests (tests/gpu).

Errors are measured relative to the largest reference magnitude of each output:
``max|got - want| <= tol * max(1, max|want|)``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from tests.reference import mlstm_reference, random_inputs
from xlstm_flax.kernels.triton import mlstm_chunkwise_fw


class FwCase(NamedTuple):
    dtype: type
    B: int
    S: int
    DHQK: int
    DHV: int
    chunk_size_inter: int
    chunk_size_intra: int
    with_states: bool
    tuning: dict

    def id(self) -> str:
        return (
            f"{jnp.dtype(self.dtype).name}-B{self.B}-S{self.S}-{self.DHQK}x{self.DHV}-"
            f"{self.chunk_size_inter}of{self.chunk_size_intra}{'-states' if self.with_states else ''}"
            f"{'-scores' if self.tuning.get('materialise_scores') else ''}"
        )


def assert_close(name, got, want, tol):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    assert np.all(np.isfinite(got)), f"{name}: non-finite values (NaN in the interpreter = never written)"
    err, scale = np.max(np.abs(got - want)), max(1.0, np.max(np.abs(want)))
    assert err <= tol * scale, f"{name}: max abs error {err:.3g} > {tol} * {scale:.3g}"


def make_inputs(seed, dtype, B, S, DHQK, DHV, with_states, NH=2):
    """Fresh random (q, k, v, i, f) dict and initial states dict (c0, n0, m0; empty without states)."""
    x = random_inputs(
        jax.random.PRNGKey(seed), B=B, NH=NH, S=S, DHQK=DHQK, DHV=DHV, dtype=dtype, with_states=with_states
    )
    states = {}
    if with_states:
        states = dict(c0=x.pop("c_initial"), n0=x.pop("n_initial"), m0=x.pop("m_initial"))
    return x, states


def reference(x, eps, **states):
    """float64 ``((h, den, m), (c_last, n_last, m_last))`` as numpy arrays."""
    with jax.enable_x64():
        h, den, m, last = mlstm_reference(x["q"], x["k"], x["v"], x["i"], x["f"], eps=eps, **states)
        return tuple(np.asarray(a) for a in (h, den, m)), tuple(np.asarray(a) for a in last)


def boundaries_to_check(NC: int) -> list[int]:
    """Intra-chunk boundaries whose states are compared: first, second, middle and last."""
    return sorted({0, 1, NC // 2, NC})


def reference_states_at(x, chunk, states, boundaries):
    """States after ``c * chunk`` steps for c in ``boundaries`` (stacked on axis 2), from the
    reference's last states of each prefix (boundary 0 = the initial state, zeros / m = 0 if absent)."""
    B, NH, S, DHQK = x["q"].shape
    DHV = x["v"].shape[-1]
    first = (
        states.get("c0", np.zeros((B, NH, DHQK, DHV))),
        states.get("n0", np.zeros((B, NH, DHQK))),
        states.get("m0", np.zeros((B, NH))),
    )
    out = []
    for c in boundaries:
        prefix = {key: x[key][:, :, : c * chunk] for key in ("q", "k", "v", "i", "f")}
        out.append(tuple(np.asarray(a) for a in first) if c == 0 else reference(prefix, 0.0, **states)[1])
    return tuple(np.stack([o[j] for o in out], axis=2) for j in range(3))


def check_forward(case: FwCase, tol: float, seed: int, eps: float = 1e-6) -> None:
    """mlstm_chunkwise_fw's h, den, m, last states and the states at :func:`boundaries_to_check` vs
    the float64 reference."""
    x, states = make_inputs(seed, case.dtype, case.B, case.S, case.DHQK, case.DHV, case.with_states)
    h, den, m, last, all_states = mlstm_chunkwise_fw(
        x["q"],
        x["k"],
        x["v"],
        x["i"],
        x["f"],
        states.get("c0"),
        states.get("n0"),
        states.get("m0"),
        return_last_states=True,
        return_all_states=True,
        chunk_size_inter=case.chunk_size_inter,
        chunk_size_intra=case.chunk_size_intra,
        eps=eps,
        **case.tuning,
    )
    (ref_h, ref_den, ref_m), ref_last = reference(x, eps, **states)
    assert h.dtype == case.dtype and den.dtype == jnp.float32 and m.dtype == jnp.float32
    assert_close("h", h, ref_h, tol)
    assert_close("vecN (den)", den, ref_den, tol)
    assert_close("vecM", m, ref_m, tol)
    for name, got, want in zip(("C", "n", "m"), last, ref_last):
        assert_close(f"last {name}", got, want, tol)
    boundaries = boundaries_to_check(case.S // case.chunk_size_intra)
    ref_all = reference_states_at(x, case.chunk_size_intra, states, boundaries)
    for name, got, want in zip(("C", "n", "m"), all_states, ref_all):
        assert got.shape[2] == case.S // case.chunk_size_intra + 1, f"all-states {name}: {got.shape}"
        assert_close(f"all-states {name} at boundaries {boundaries}", got[:, :, boundaries], want, tol)
