"""Document layouts for the segment (reset) tests, and the float64 reference run document by document.

A layout is ``segment_ids (B, S) int32``; a new document starts wherever the id changes (docs/math.md,
"Document resets").
"""

from __future__ import annotations

import jax
import numpy as np

from tests.reference import mlstm_reference


def segment_layout(seed: int, B: int, S: int, chunk: int, n_random: int) -> np.ndarray:
    """(B, S) int32 ids. Row 0 has resets at chunk boundaries, right after one, three in a row (one-token
    documents), at the last step, plus ``n_random`` random ones; other rows have random resets only
    (row 1 none when B > 2: one document). Ids are arbitrary ints that change at a reset, and may
    return to an earlier value (a change is all that counts)."""
    rng = np.random.default_rng(seed)
    resets = np.zeros((B, S), bool)
    for b in range(B):
        resets[b, rng.choice(np.arange(1, S), size=min(n_random, S - 1), replace=False)] = True
    special = [t for t in (chunk, chunk + 1, 2 * chunk - 1, 2 * chunk, 3, 4, 5, S - 1) if 0 < t < S]
    resets[0, special] = True
    if B > 2:
        resets[1] = False
    ids = np.cumsum(resets, axis=1) % 3  # 0, 1, 2, 0, ...: ids repeat, documents do not
    return (ids * 5 - 4).astype(np.int32)


def document_bounds(segment_ids_row: np.ndarray) -> list[tuple[int, int]]:
    """[(start, stop), ...] of the documents of one row."""
    starts = [0] + [t for t in range(1, len(segment_ids_row)) if segment_ids_row[t] != segment_ids_row[t - 1]]
    return list(zip(starts, starts[1:] + [len(segment_ids_row)]))


def per_document_reference(x: dict, segment_ids: np.ndarray, **options):
    """float64 ``(h, (c, n, m))``: every document of every row through ``mlstm_reference`` on its own,
    the first from the initial states of ``x`` (when given), the others from zero states."""
    B = x["q"].shape[0]
    hs, last = [], []
    with jax.enable_x64():
        for b in range(B):
            row = {name: None if val is None else np.asarray(val[b : b + 1], np.float64) for name, val in x.items()}
            pieces = []
            for start, stop in document_bounds(segment_ids[b]):
                states = (row.get("c_initial"), row.get("n_initial"), row.get("m_initial")) if start == 0 else ()
                h, _, _, state = mlstm_reference(*(row[n][:, :, start:stop] for n in "qkvif"), *states, **options)
                pieces.append(np.asarray(h))
            hs.append(np.concatenate(pieces, axis=2))
            last.append([np.asarray(s) for s in state])
    return np.concatenate(hs, axis=0), tuple(np.concatenate([st[j] for st in last], axis=0) for j in range(3))
