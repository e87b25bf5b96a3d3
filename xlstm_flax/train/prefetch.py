"""Items of an iterator produced ahead of time in a background thread (training batches while the device
runs the previous step)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

_DONE = object()  # the producer ran out of items


class Prefetcher:
    """Iterate over ``items`` with up to ``depth`` of them prepared ahead by a daemon thread. An exception
    raised while producing is raised again by the consumer's ``next`` (after the items before it);
    :meth:`close` (or leaving a ``with`` block) stops the thread and waits for it."""

    def __init__(self, items: Iterator[Any], depth: int = 2):
        if depth < 1:
            raise ValueError(f"prefetch depth must be >= 1, got {depth}")
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, args=(items,), name="prefetch", daemon=True)
        self._thread.start()

    def _produce(self, items: Iterator[Any]) -> None:
        try:
            for item in items:
                if not self._put((item, None)):
                    return
            self._put((_DONE, None))
        except BaseException as err:  # handed to the consumer
            self._put((None, err))

    def _put(self, entry) -> bool:
        """Queue ``entry``, waiting for room unless stopped; False once stopped."""
        while not self._stop.is_set():
            try:
                self._queue.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self):
        return self

    def __next__(self):
        item, err = self._queue.get()
        if err is not None:
            self._stop.set()
            raise err
        if item is _DONE:
            self._stop.set()
            raise StopIteration
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
