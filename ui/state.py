"""A ranking run for one browser session: its inputs, its results as they arrive, and its worker thread.

The run executes in a background thread, not in the script: a Streamlit rerun (any click, a filter
change, a page switch) interrupts the script, but not the run. Results are written into the Run as
each image or batch finishes, so whatever is done survives a stop; Stop sets an event the engine
polls between forwards. A live fragment on the page polls the Run for progress. A run whose browser
session has gone (tab closed) stops by itself within seconds, keeping what is done.

No Streamlit import here: this is plain state, testable on its own.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

from lychee_rerank import ImageResult, InputError, Progress, Ranking, Reranker, RunSettings
from lychee_rerank.confine import DataFile

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger("lychee_rerank.app")

# A run whose browser session has been disconnected this long stops; what is done is kept. Short
# enough that a closed tab frees the model for the others within seconds, long enough to ride out a
# network blip (the browser reconnects to the same session).
DISCONNECT_GRACE_S = 3.0

RUNNING, DONE, STOPPED, FAILED, READY = "running", "done", "stopped", "failed", "ready"
SESSION_KEY = "run"  # st.session_state[SESSION_KEY]: the session's Run (read by every page)


@dataclass(frozen=True)
class Item:
    """One image to rank: its display name, an identity, and where its bytes are.

    ``source`` is an upload's bytes (the very object Streamlit holds: never copied) or a file on the
    server as a ``DataFile`` (read when needed: scoring, a thumbnail, a download; checked where it is
    opened). ``digest`` is a content
    hash for uploads, and a hash of path, size and modification time for server files; scores carry
    over between image sets by it.
    """

    name: str
    digest: str
    source: bytes | DataFile = field(repr=False, compare=False)

    @property
    def nbytes(self) -> int:
        if isinstance(self.source, (bytes, bytearray)):
            return len(self.source)
        return self.source.size()


class Run:
    """Inputs and results of one ranking; ``results[i]`` belongs to ``items[i]``."""

    def __init__(
        self,
        settings: RunSettings,
        items: Sequence[Item],
        *,
        model_name: str = "",
        is_demo: bool = False,
        quantization: str | None = None,
        results: Sequence[ImageResult] | None = None,
        elapsed_s: float = 0.0,
    ):
        self.settings = settings  # the run's one settings object: what the engine gets, what exports record
        self.items = list(items)
        self.model_name = model_name
        self.is_demo = is_demo
        self.quantization = quantization
        self.results: list[ImageResult] = (
            list(results) if results is not None else [ImageResult(i, it.name) for i, it in enumerate(self.items)]
        )
        self.elapsed_s = elapsed_s  # summed over every start (a resumed run adds up)
        self.status = READY if results is None else DONE
        self.error: tuple[str, str] | None = None  # (kind: "input" | "run", one sentence)
        self.progress: Progress | None = None
        self.waiting = False
        self.queue_position: int | None = None  # while waiting: 1 = next to run
        self.mode_used: str | None = None
        self.already_scored = 0  # scored before the current start (a resume)
        self.todo = 0  # images in the current start
        self.lock = threading.RLock()
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None
        self.starts = 0  # how many times this run was started (first run + resumes)

    # -- reading --------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.status == RUNNING

    def snapshot(self) -> list[ImageResult]:
        with self.lock:
            return list(self.results)

    def pending(self) -> list[int]:
        with self.lock:
            return [r.index for r in self.results if r.status == "pending"]

    def scored_count(self) -> int:
        with self.lock:
            return sum(r.status == "scored" for r in self.results)

    def error_count(self) -> int:
        with self.lock:
            return sum(r.status == "error" for r in self.results)

    # -- control --------------------------------------------------------------------------------
    def stop(self) -> None:
        self.stop_event.set()

    def start(
        self,
        reranker: Reranker,
        indices: Sequence[int] | None = None,
        *,
        settings: RunSettings | None = None,
        session_alive: Callable[[], bool] | None = None,
        on_picture: Callable[[Item, "Image.Image", tuple[int, int]], None] | None = None,
    ) -> None:
        """Rank ``indices`` (default: every image not scored yet) in a background thread.

        ``settings``: for a resume, the page's current settings (same scores, perhaps another
        execution mode); refused when they would score differently. ``session_alive`` says whether
        the browser session that started the run is still connected; once it has said no for
        DISCONNECT_GRACE_S, the run stops. ``on_picture(item, picture, size)``: each image as the
        engine decoded it for the model (Reranker.run's hook), for thumbnails.
        """
        if settings is not None and settings.changes(self.settings):
            raise ValueError(f"these results were scored under other settings ({', '.join(settings.changes(self.settings))})")
        with self.lock:
            if self.running:
                return
            if settings is not None:
                self.settings = settings
            indices = list(self.pending() if indices is None else indices)
            self.status = RUNNING
            self.error = None
            self.progress = None
            self.waiting = False
            self.queue_position = None
            self.stop_event = threading.Event()
            chosen = set(indices)
            self.already_scored = sum(r.status != "pending" for r in self.results if r.index not in chosen)
            self.todo = len(indices)
            self.starts += 1
            self.thread = threading.Thread(
                target=self._work, args=(reranker, indices, session_alive, on_picture), name="lychee-app-run",
                daemon=True,
            )
        self.thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the worker has finished (tests, scripts); True when it has."""
        thread = self.thread
        if thread is not None:
            thread.join(timeout)
        return not self.running

    def _work(self, reranker: Reranker, indices: list[int], session_alive, on_picture) -> None:
        sources = [self.items[i].source for i in indices]

        def picture_hook(index, picture, size) -> None:  # the engine's index is into this start's subset
            on_picture(self.items[indices[index]], picture, size)

        names = [self.items[i].name for i in indices]
        stop_event = self.stop_event
        last_seen = time.monotonic()

        def store(result: ImageResult) -> None:
            """Keep a finished result at its place in the full list (the engine saw a subset)."""
            original = indices[result.index]
            first_stage = self.results[original]  # search then rerank: its retrieval rank and similarity stay
            self.results[original] = dataclasses.replace(
                result, index=original, rank=None,
                retrieval_rank=first_stage.retrieval_rank, similarity=first_stage.similarity,
            )

        def on_progress(event: Progress) -> None:
            with self.lock:
                if event.waiting:
                    self.waiting, self.queue_position = True, event.queue_position
                    return
                self.waiting, self.queue_position = False, None
                for result in event.new_results:
                    store(result)
                self.progress = event

        def session_gone() -> bool:
            nonlocal last_seen
            if session_alive is None or session_alive():
                last_seen = time.monotonic()
                return False
            return time.monotonic() - last_seen > DISCONNECT_GRACE_S

        def should_stop() -> bool:
            if stop_event.is_set():
                return True
            if session_gone():
                log.info("the browser session of a run is gone: stopping the run")
                stop_event.set()
                return True
            return False

        status, error = FAILED, None
        try:
            ranking = reranker.run(self.settings, sources, names=names, progress=on_progress, should_stop=should_stop,
                                   on_picture=picture_hook if on_picture is not None else None)
        except InputError as exc:
            error = ("input", str(exc))
        except Exception as exc:  # the page shows one sentence; the log keeps the traceback
            log.exception("ranking run failed")
            error = ("run", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        else:
            with self.lock:
                for result in ranking.results:  # every finished result, even one a callback missed
                    if result.status != "pending":
                        store(result)
                self.elapsed_s += ranking.elapsed_s  # ranking time only: waiting in the queue is not counted
                self.mode_used = ranking.mode
                self.quantization = ranking.quantization
            if ranking.error:  # an unexpected error stopped it: what finished is kept, the rest can resume
                status, error = FAILED, ("run", ranking.error)
            else:
                status = STOPPED if ranking.cancelled or self.pending() else DONE
        finally:
            with self.lock:
                self.error = error
                self.waiting, self.queue_position = False, None
                self.status = status

    # -- new inputs -----------------------------------------------------------------------------
    def rebase(self, items: Sequence[Item]) -> "Run":
        """The same query over another set of files: scores carry over by content, the rest is pending."""
        with self.lock:
            known: dict[str, ImageResult] = {}
            for item, result in zip(self.items, self.results):
                if result.status != "pending":
                    known.setdefault(item.digest, result)
            results = [
                dataclasses.replace(known[item.digest], index=i, name=item.name, rank=None)
                if item.digest in known
                else ImageResult(i, item.name)
                for i, item in enumerate(items)
            ]
            run = Run(
                self.settings,
                items,
                model_name=self.model_name,
                is_demo=self.is_demo,
                quantization=self.quantization,
                results=results,
                elapsed_s=self.elapsed_s,
            )
            run.mode_used = self.mode_used
            return run

    # -- exports --------------------------------------------------------------------------------
    def ranking(self) -> Ranking:
        """The run as the engine's Ranking (every start added up): what the downloads export, in the
        same schema as the command line's outputs."""
        with self.lock:
            return Ranking(
                query=self.settings.query,
                instruction=self.settings.instruction,
                results=tuple(self.results),
                mode=self.mode_used or self.settings.mode,
                elapsed_s=self.elapsed_s,
                cancelled=self.status == STOPPED,
                model=self.model_name,
                is_demo=self.is_demo,
                error=self.error[1] if self.error else None,
                settings=self.settings,
                quantization=self.quantization,
            )
