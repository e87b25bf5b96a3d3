"""The float64 quadratic reference agrees with a literal numpy loop over the step recurrence of docs/math.md."""

import jax
import numpy as np
from jax import enable_x64

from tests.reference import mlstm_reference, random_inputs


def _step_loop(q, k, v, i, f, c, n, m, s, eps):
    """The step recurrence of docs/math.md step by step, float64 numpy, one (batch, head)."""
    hs, dens, ms = [], [], []
    for t in range(q.shape[0]):
        logf = -np.log1p(np.exp(-f[t]))
        m_new = max(logf + m, i[t])
        fg, ig = np.exp(logf + m - m_new), np.exp(i[t] - m_new)
        c = fg * c + ig * np.outer(k[t], v[t])
        n = fg * n + ig * k[t]
        m = m_new
        den = max(abs(n @ (s * q[t])), np.exp(-m))
        hs.append(c.T @ (s * q[t]) / (den + eps))
        dens.append(den)
        ms.append(m)
    return np.array(hs), np.array(dens), np.array(ms), (c, n, m)


def test_reference_matches_step_loop():
    x = random_inputs(jax.random.PRNGKey(0), B=2, NH=3, S=19, DHQK=5, DHV=7, with_states=True)
    x = {key: np.asarray(val, np.float64) for key, val in x.items()}
    eps, s = 1e-3, 0.37
    with enable_x64():
        h, den, m, (c_last, n_last, m_last) = mlstm_reference(
            x["q"],
            x["k"],
            x["v"],
            x["i"],
            x["f"],
            x["c_initial"],
            x["n_initial"],
            x["m_initial"],
            qk_scale=s,
            eps=eps,
        )
    for b in range(2):
        for hd in range(3):
            ref = _step_loop(
                x["q"][b, hd],
                x["k"][b, hd],
                x["v"][b, hd],
                x["i"][b, hd],
                x["f"][b, hd],
                x["c_initial"][b, hd],
                x["n_initial"][b, hd],
                x["m_initial"][b, hd],
                s,
                eps,
            )
            # float64 on both sides: agreement to 1e-10 relative.
            np.testing.assert_allclose(h[b, hd], ref[0], rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(den[b, hd], ref[1], rtol=1e-10)
            np.testing.assert_allclose(m[b, hd], ref[2], rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(c_last[b, hd], ref[3][0], rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(n_last[b, hd], ref[3][1], rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(m_last[b, hd], ref[3][2], rtol=1e-10, atol=1e-12)


def test_reference_segments_match_per_document_runs():
    """segment_ids in the reference == every document run alone (first one from the initial state)."""
    from tests.segments import per_document_reference, segment_layout

    x = random_inputs(jax.random.PRNGKey(1), B=3, NH=2, S=40, DHQK=5, DHV=7, with_states=True)
    x = {key: np.asarray(val, np.float64) for key, val in x.items()}
    ids = segment_layout(2, B=3, S=40, chunk=8, n_random=6)
    with enable_x64():
        h, _, _, last = mlstm_reference(
            *(x[n] for n in "qkvif"),
            x["c_initial"],
            x["n_initial"],
            x["m_initial"],
            qk_scale=0.4,
            eps=1e-3,
            segment_ids=ids,
        )
    want_h, want_last = per_document_reference(x, ids, qk_scale=0.4, eps=1e-3)
    # float64 on both sides: agreement to 1e-10 relative.
    np.testing.assert_allclose(h, want_h, rtol=1e-10, atol=1e-12)
    for got, want in zip(last, want_last):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
