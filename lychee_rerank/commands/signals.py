"""SIGINT and SIGTERM in a command: handled alike, so that ``docker stop``, ``timeout`` and KubeRay
(SIGTERM) stop a run as Ctrl-C does, and the command exits with 128 + the signal's number."""

from __future__ import annotations

import signal
import threading


class Interrupted(BaseException):
    """A signal that cannot wait for the run to stop between forwards (see StopSignals)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class StopSignals:
    """SIGINT and SIGTERM, handled alike. While images are being ranked, the first signal stops the
    run between forwards (what finished is kept and written); at any other time (checking the
    inputs, loading the model, writing the outputs), or on a second signal, Interrupted is raised."""

    HANDLED = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.received: int | None = None
        self.ranking = False
        self.phase = "checking the inputs"
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopSignals":
        for signum in self.HANDLED:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *_exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, _frame) -> None:
        first = self.received is None
        self.received = self.received or signum
        if self.ranking and first:
            self.stop.set()
            return
        raise Interrupted(signum)

    @property
    def exit_code(self) -> int:
        return 128 + (self.received or signal.SIGINT)
