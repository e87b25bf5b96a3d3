"""benchmarks/kernels.py runs on CPU at a tiny size, and its timer takes turns.

* ``interleaved_median_ms`` runs every function warmup + reps times; after the warm-up each rep runs
  each function once, in an order that changes between reps and repeats with the seed; consecutive
  calls take consecutive input sets; with ``queued`` = n each turn is n calls in a row and the time is
  per call.
* ``timed_rows`` times the rows of one group in turns and the groups apart, and keeps the row order.
* The kernel table holds one row per (variant, mode, segment count) in the order given, positive times
  for the pure-JAX backends and the error of a variant with an unknown option in its row.
"""

import time

import jax
import jax.numpy as jnp

from benchmarks import kernels as bench
from benchmarks.timing import interleaved_median_ms


def _call_order(seed: int) -> list[tuple[str, int]]:
    calls = []

    def recorder(name):
        def fn(x):
            calls.append((name, int(x)))
            return jnp.zeros(())

        return fn

    sets = [(jnp.int32(n),) for n in range(4)]
    medians = interleaved_median_ms([recorder(n) for n in "abc"], sets, warmup=2, reps=8, seed=seed)
    assert len(medians) == 3 and all(m >= 0 for m in medians)
    return calls


def test_interleaved_timing_takes_turns_in_seeded_orders_and_rotates_inputs():
    calls = _call_order(seed=0)
    assert [set_index for _, set_index in calls] == [n % 4 for n in range(len(calls))]
    order = [name for name, _ in calls]
    assert order[:6] == ["a", "b", "c"] * 2  # warm-up in the given order
    reps = [tuple(order[6 + 3 * r : 9 + 3 * r]) for r in range(8)]
    assert all(sorted(rep) == ["a", "b", "c"] for rep in reps)
    assert len(set(reps)) > 1  # the order changes between reps
    assert _call_order(seed=0) == calls
    assert _call_order(seed=1) != calls


def test_queued_timing_issues_calls_in_a_row_and_reports_per_call():
    calls = []

    def slow(x):
        calls.append(int(x))
        time.sleep(0.002)
        return x

    sets = [(jnp.int32(n),) for n in range(5)]
    (median,) = interleaved_median_ms([slow], sets, warmup=1, reps=4, queued=3)
    assert calls == [n % 5 for n in range(15)]  # (1 + 4) turns of 3 calls, inputs rotating throughout
    assert 2.0 <= median < 6.0  # per call (each sleeps 2 ms), not per turn of three


def test_tiny_run_writes_a_row_per_variant_mode_and_segments(tmp_path):
    out = tmp_path / "kernels.md"
    report = bench.main(
        [
            "--variants",
            "chunkwise--jax;parallel--jax;chunkwise--jax:bogus=1",
            "--shapes",
            "1x2x64x16x32",
            "--modes",
            "fw,fwbw",
            "--segments",
            "0,3",
            "--out",
            str(out),
        ]
    )
    assert out.read_text() == report
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in report.splitlines() if "--jax |" in line]
    expected = [
        (name, mode, opts)
        for name, extra in (("chunkwise--jax", ""), ("parallel--jax", ""), ("chunkwise--jax", "bogus=1"))
        for mode in ("fw", "fwbw")
        for opts in ([extra or "-", ",".join(filter(None, (extra, "segments=3")))])
    ]
    assert [(r[0], r[2], r[3]) for r in rows] == expected
    for row in rows:
        if "bogus" in row[3]:
            assert row[4] == "-" and "bogus" in row[-1], row
        else:
            assert float(row[4]) > 0 and float(row[5]) > 0 and float(row[8]) > 0 and not row[-1], row


def test_rows_of_different_groups_are_timed_apart():
    calls = []

    def make(name):
        def fn(x):
            jax.debug.callback(lambda: calls.append(name))
            return x * 2

        return lambda: jax.jit(fn)

    names = [("a", "fw"), ("b", "fw"), ("c", "fwbw"), ("d", "fwbw")]
    entries = [bench.Entry(n, "1", mode, {}, (1.0, 1.0), make(n), group=(mode,)) for n, mode in names]
    rows = bench.timed_rows(entries, [(jnp.ones(4),)])
    assert [row[0] for row in rows] == ["a", "b", "c", "d"] and all(float(row[4]) > 0 for row in rows)
    timed = calls[len(names) :]  # after one checking call per entry
    first_fwbw = min(timed.index("c"), timed.index("d"))
    assert set(timed[:first_fwbw]) == {"a", "b"} and set(timed[first_fwbw:]) == {"c", "d"}, timed
