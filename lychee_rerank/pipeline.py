"""Parallel preprocessing: rows prepared on a pool of worker threads, in the engine's order, a bounded
number ahead of the model.

Threads, not processes (measured, docs/benchmarks.md): decoding (libjpeg, zlib), PIL resizing and the
processor's torch ops release the GIL, and threads share the processor and hand tensors over without
pickling. Each image is reduced to model size inside its worker, so what waits in memory is the
model-size patches of at most ``window`` images, whatever the files' sizes.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Generic, Hashable, Sequence, TypeVar

Item = TypeVar("Item", bound=Hashable)
Row = TypeVar("Row")


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a container's cpuset), not the host's."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class RowFeeder(Generic[Item, Row]):
    """Prepares ``prepare(item)`` for items in ``order`` ahead of use.

    ``get(item)`` waits for that item's row (re-raising its preparation error); ``release(item)``
    forgets it and lets the pool run further ahead. At most ``window`` rows are held or in progress
    beyond the one being waited for. ``close()`` cancels what has not started. Items for which
    ``skip(item)`` is true when their turn comes are not prepared ahead (a run that was dropped).
    """

    def __init__(
        self,
        order: Sequence[Item],
        prepare: Callable[[Item], Row],
        workers: int,
        window: int | None = None,
        skip: Callable[[Item], bool] | None = None,
    ):
        self._order = list(order)
        self._prepare = prepare
        self._skip = skip
        self.workers = max(1, workers)
        self.window = max(1, window if window is not None else 2 * self.workers)
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="lychee-prepare")
        self._futures: dict[Item, Future] = {}
        self._next = 0
        self._lock = threading.Lock()

    def __enter__(self) -> "RowFeeder[Item, Row]":
        self._fill()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _submit(self, item: Item) -> Future:
        future = self._futures.get(item)
        if future is None:
            future = self._futures[item] = self._pool.submit(self._prepare, item)
        return future

    def _fill(self) -> None:
        with self._lock:
            while self._next < len(self._order) and len(self._futures) < self.window:
                item = self._order[self._next]
                self._next += 1
                if self._skip is None or not self._skip(item):
                    self._submit(item)

    def get(self, item: Item) -> Row:
        with self._lock:
            future = self._submit(item)
        self._fill()
        return future.result()

    def release(self, item: Item) -> None:
        with self._lock:
            self._futures.pop(item, None)
        self._fill()

    def close(self) -> None:
        with self._lock:
            self._next = len(self._order)
            for future in self._futures.values():
                future.cancel()
            self._futures.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)
