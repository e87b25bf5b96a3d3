"""The prefetching iterator yields exactly the synchronous iterator's items, in order; an exception in the
producer reaches the consumer after the items before it; closing early stops the producer."""

import threading

import numpy as np
import pytest

from xlstm_flax.train.prefetch import Prefetcher


def batches(seed: int, count: int):
    rng = np.random.default_rng(seed)
    for step in range(count):
        yield step, rng.integers(0, 1000, (2, 3, 9))


def test_same_batches_as_synchronous():
    expected = list(batches(5, 20))
    with Prefetcher(batches(5, 20), depth=3) as prefetched:
        got = list(prefetched)
    assert len(got) == len(expected)
    for (step, batch), (want_step, want) in zip(got, expected):
        assert step == want_step
        np.testing.assert_array_equal(batch, want)


def test_producer_exception_reaches_consumer():
    def failing():
        yield from batches(1, 3)
        raise OSError("disk went away")

    with Prefetcher(failing()) as prefetched:
        assert [step for step, _ in (next(prefetched) for _ in range(3))] == [0, 1, 2]
        with pytest.raises(OSError, match="disk went away"):
            next(prefetched)


def test_close_stops_a_blocked_producer():
    produced = []

    def endless():
        while True:
            produced.append(len(produced))
            yield produced[-1]

    prefetched = Prefetcher(endless(), depth=2)
    assert next(prefetched) == 0
    prefetched.close()
    assert not any(t.name == "prefetch" and t.is_alive() for t in threading.enumerate())
    assert len(produced) <= 4  # the queue bound held it back
    with pytest.raises(ValueError, match="depth must be >= 1"):
        Prefetcher(iter(()), depth=0)
