"""Requests wait in a bounded queue; one thread runs them in passes over the model.

Each pass takes every request waiting at that moment (up to ``max_jobs_per_pass``) and hands them to
``Reranker.run_jobs``: their images share forwards under the engine's token budget. Requests that
arrive during a pass wait for the next one. A request whose client went away is dropped: skipped if
it is still waiting, its images left unscored if its pass is running (``Job.should_stop``).
"""

from __future__ import annotations

import collections
import threading
import time
from concurrent.futures import Future

from ..checks import InputError
from ..jobs import Job, as_stop_callable


class QueueFull(Exception):
    """No room in the queue; ``retry_after_s``: when trying again is worth it."""

    def __init__(self, retry_after_s: int):
        super().__init__(retry_after_s)
        self.retry_after_s = retry_after_s


class Scheduler:
    def __init__(self, reranker, max_waiting: int = 32, max_jobs_per_pass: int = 16):
        self.reranker = reranker
        self.max_waiting = max_waiting
        self.max_jobs_per_pass = max_jobs_per_pass
        self._waiting: collections.deque[tuple[Job, Future]] = collections.deque()
        self._running = 0
        self._last_pass_s = 1.0
        self._closed = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="lychee-service-passes", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Requests waiting for a pass (not those in the running one)."""
        return len(self._waiting)

    @property
    def running(self) -> int:
        return self._running

    def full(self) -> bool:
        return len(self._waiting) >= self.max_waiting

    def retry_after_s(self) -> int:
        """Seconds until a place is likely free: the length of the last pass, rounded up."""
        return max(1, int(self._last_pass_s + 0.999))

    def submit(self, job: Job) -> Future:
        """A future for the job's Ranking; QueueFull when the queue is full."""
        future: Future = Future()
        with self._changed:
            if self._closed:
                raise RuntimeError("the service is shutting down")
            if self.full():
                raise QueueFull(self.retry_after_s())
            self._waiting.append((job, future))
            self._changed.notify_all()
        return future

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        self._thread.join(timeout=30)

    def _take(self) -> list[tuple[Job, Future]] | None:
        with self._changed:
            while not self._waiting and not self._closed:
                self._changed.wait()
            if self._closed:
                return None
            taken = []
            while self._waiting and len(taken) < self.max_jobs_per_pass:
                job, future = self._waiting.popleft()
                if as_stop_callable(job.should_stop)():  # its client went away while it waited
                    future.cancel()
                elif future.set_running_or_notify_cancel():
                    taken.append((job, future))
            self._running = len(taken)
            return taken

    def _loop(self) -> None:
        while (taken := self._take()) is not None:
            if taken:
                start = time.perf_counter()
                self._run(taken)
                self._last_pass_s = time.perf_counter() - start
            self._running = 0

    def _run(self, taken: list[tuple[Job, Future]]) -> None:
        try:
            rankings = self.reranker.run_jobs([job for job, _ in taken])
        except InputError as exc:
            if len(taken) == 1:
                taken[0][1].set_exception(exc)
            else:  # one request's settings must not cost the others: each runs alone
                for one in taken:
                    self._run([one])
            return
        except Exception as exc:  # reported to its requests, never a dead scheduler
            for _, future in taken:
                future.set_exception(exc)
            return
        for (_, future), ranking in zip(taken, rankings):
            future.set_result(ranking)
