"""Several runs in one pass (``Reranker.run_jobs``): a service's concurrent requests share forwards.

Each run keeps everything that decides its scores -- its query, query image, instruction and
resolution live in its own ``PairScorer``, which prepares its rows -- while the collate (left padding,
as the processor pads a batch) and the forward are the model's, the same for every run. So a row
scores the same whichever rows share its batch, and one place (``scoring``) still decides how an
image becomes a score. Each run reports its own progress and stops on its own flag.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

from .execution import ProgressClock
from .images import ImageSource
from .results import ImageResult, Progress, cache_counts
from .scoring import Batch, PairScorer, PlannedImage, PreparedRow
from .settings import RunSettings

if TYPE_CHECKING:
    from PIL import Image

ProgressCallback = Callable[[Progress], None]
StopFlag = Callable[[], bool] | threading.Event
PictureCallback = Callable[[int, "Image.Image", tuple[int, int]], None]


@dataclass(frozen=True)
class Job:
    """One run's share of a pass: what ``Reranker.run`` takes, as one object."""

    settings: RunSettings
    images: Sequence[ImageSource]
    names: Sequence[str] | None = None
    progress: ProgressCallback | None = None
    should_stop: StopFlag | None = None
    on_picture: PictureCallback | None = None  # each decoded picture, for a front end's thumbnails


def execution(settings: RunSettings) -> tuple:
    """How a run executes (not what its scores depend on): runs sharing a pass must agree on it. The
    feature cache too: a forward stores the features it computes, for every row, in one folder."""
    return settings.mode, settings.workers, settings.token_budget, settings.cache_dir


def as_stop_callable(flag: StopFlag | None) -> Callable[[], bool]:
    if flag is None:
        return lambda: False
    if isinstance(flag, threading.Event):
        return flag.is_set
    return flag


class JobRun:
    """A job during the pass: its results (input order), its clock, its progress events."""

    def __init__(self, job: Job, results: list[ImageResult]):
        self.job = job
        self.results = results
        self.notify = job.progress or (lambda _event: None)
        self._flag = as_stop_callable(job.should_stop)
        self.stopped = False  # latched: once asked to stop, the job stays stopped
        self.clock = ProgressClock(len(results))

    def stop(self) -> bool:
        self.stopped = self.stopped or bool(self._flag())
        return self.stopped

    def start(self, planned: Sequence[PlannedImage], unreadable: list[ImageResult]) -> None:
        """Planned: no longer waiting. Files whose header could not be read are finished at once."""
        self.clock = ProgressClock(len(self.results), work_of(planned))
        self.notify(Progress(0, len(self.results), 0.0, 0.0, None))
        if unreadable:
            self.record(unreadable, (0, 0), 0, None)

    def record(self, new: list[ImageResult], work: tuple[int, int], batch_size: int, budget: int | None) -> None:
        for result in new:
            self.results[result.index] = result
        elapsed, rate, eta = self.clock.advance(len(new), work)
        hits, misses = cache_counts(self.results)
        self.notify(Progress(self.clock.done, self.clock.total, elapsed, rate, eta, tuple(new), batch_size, budget,
                             cache_hits=hits, cache_misses=misses))


def work_of(items: Sequence[PlannedImage]) -> tuple[int, int]:
    """The work of scoring these images, for the ETA (execution.ProgressClock): the model's
    (sequence tokens) and the CPU's (pixels decoded: the file's own size)."""
    tokens = sum(item.sequence_tokens for item in items)
    pixels = sum((item.size.file_width or item.size.width) * (item.size.file_height or item.size.height) for item in items)
    return tokens, pixels


class JobsScorer:
    """The execution policy's Scorer over several runs: each row is prepared by its own run's scorer
    (``PlannedImage.job``); collate and forward belong to the model, shared by all the scorers (a
    row's cache key is its own run's, so the features a forward stores are keyed right)."""

    def __init__(self, scorers: Sequence[PairScorer] = ()):
        self.scorers = list(scorers)

    def prepare_row(self, item: PlannedImage) -> PreparedRow:
        return self.scorers[item.job].prepare_row(item)

    def collate(self, rows: list[PreparedRow]) -> Batch:
        return self.scorers[0].collate(rows)

    def forward(self, batch: Batch) -> list[float]:
        return self.scorers[0].forward(batch)

    def close(self) -> None:
        """Every run's feature cache finishes its writes."""
        for scorer in self.scorers:
            scorer.close()

    @property
    def device(self):
        return self.scorers[0].device
