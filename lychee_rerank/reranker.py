"""The public engine: ``Reranker.load(...)`` then ``reranker.rank(query, images)``."""

from __future__ import annotations

import threading
import time
from typing import Callable, Sequence

from .execution import (
    MODES,
    Outcome,
    ProgressClock,
    initial_token_budget,
    run_batched,
    run_sequential,
)
from .images import ImageError, ImageSource, load_image, probe_image, source_name
from .loading import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS, ModelInfo, load_model
from .prompt import DEFAULT_INSTRUCTION
from .results import ImageResult, Progress, Ranking
from .scoring import PairScorer, PlannedImage

ProgressCallback = Callable[[Progress], None]
StopFlag = Callable[[], bool] | threading.Event


class InputError(ValueError):
    """A bad argument to rank(); the message is one sentence meant for the user."""


class Reranker:
    """A loaded Lychee reranker. One instance may serve many threads: runs are serialised."""

    def __init__(self, model, processor, info: ModelInfo, *, min_pixels: int = DEFAULT_MIN_PIXELS, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.model = model
        self.processor = processor
        self.info = info
        self.min_pixels = min_pixels
        self.max_pixels = max_pixels
        self._lock = threading.Lock()  # one run at a time on the device

    @classmethod
    def load(
        cls,
        model: str | None = None,
        *,
        dtype: str = "auto",
        attention: str = "auto",
        device_map: str | dict | None = "auto",
        min_pixels: int = DEFAULT_MIN_PIXELS,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        quantize: str = "auto",
    ) -> "Reranker":
        """Load a model by hub id, directory or 'demo' (default: $LYCHEE_MODEL or the real model).
        ``quantize``: "auto" (by free GPU memory; none on CPU), "none", "8bit" or "4bit".
        Raises ModelLoadError with a one-sentence explanation."""
        loaded_model, processor, info = load_model(
            model, dtype=dtype, attention=attention, device_map=device_map, quantize=quantize
        )
        return cls(loaded_model, processor, info, min_pixels=min_pixels, max_pixels=max_pixels)

    @property
    def busy(self) -> bool:
        return self._lock.locked()

    def rank(
        self,
        query: str,
        images: Sequence[ImageSource],
        *,
        names: Sequence[str] | None = None,
        query_image: ImageSource | None = None,
        instruction: str | None = None,
        mode: str = "auto",
        max_pixels: int | None = None,
        min_pixels: int | None = None,
        token_budget: int | None = None,
        progress: ProgressCallback | None = None,
        should_stop: StopFlag | None = None,
    ) -> Ranking:
        """Score every image against the query; results come back in input order (see Ranking.ranked()).

        ``progress`` is called after every image or batch, with the results just finished;
        ``should_stop`` is polled between forwards and stops the run early, keeping what is done.
        """
        query = (query or "").strip()
        instruction = (instruction or "").strip() or DEFAULT_INSTRUCTION
        min_pixels = min_pixels or self.min_pixels
        max_pixels = max_pixels or self.max_pixels
        if not query and query_image is None:
            raise InputError("type a query (or give a query image) to rank the images against")
        if mode not in MODES:
            raise InputError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        if not 0 < min_pixels <= max_pixels:
            raise InputError(f"max pixels ({max_pixels}) must be at least min pixels ({min_pixels})")
        if names is not None and len(names) != len(images):
            raise InputError(f"{len(names)} names for {len(images)} images")
        stop = _as_stop_callable(should_stop)
        notify = progress or (lambda _event: None)
        query_picture = None
        if query_image is not None:
            try:
                query_picture = load_image(query_image)
            except ImageError as exc:
                raise InputError(f"the query image cannot be used: {exc}") from exc

        results: list[ImageResult] = [
            ImageResult(i, names[i] if names is not None else source_name(src, i)) for i, src in enumerate(images)
        ]
        start = time.perf_counter()
        if not self._acquire(notify, stop, len(images)):
            return self._ranking(query, instruction, results, mode, start, cancelled=True)
        try:
            scorer = PairScorer(
                self.model, self.processor, query, instruction, query_picture, min_pixels, max_pixels
            )
            clock = ProgressClock(len(images))

            def record(new: list[ImageResult], batch_size: int, budget: int | None) -> None:
                for result in new:
                    results[result.index] = result
                elapsed, rate, eta = clock.advance(len(new))
                notify(Progress(clock.done, clock.total, elapsed, rate, eta, tuple(new), batch_size, budget))

            planned: list[PlannedImage] = []
            unreadable: list[ImageResult] = []
            for i, source in enumerate(images):
                try:
                    planned.append(scorer.plan(i, results[i].name, source, probe_image(source)))
                except ImageError as exc:
                    unreadable.append(ImageResult(i, results[i].name, error=str(exc)))
            notify(Progress(0, len(images), 0.0, 0.0, None))  # started: no longer waiting
            if unreadable:
                record(unreadable, 0, None)

            def emit(outcomes: list[Outcome], batch_size: int, budget: int | None) -> None:
                record([_to_result(o) for o in outcomes], batch_size, budget)

            used_mode = "sequential" if mode == "sequential" else "batched"
            if used_mode == "sequential":
                cancelled = run_sequential(planned, scorer, emit, stop)
            else:
                if token_budget is None:
                    dtype_bytes = self.model.dtype.itemsize
                    token_budget = initial_token_budget(scorer.device, self.model.config, dtype_bytes)
                cancelled = run_batched(planned, scorer, emit, stop, token_budget)
        finally:
            self._lock.release()
        return self._ranking(query, instruction, results, used_mode, start, cancelled)

    def _acquire(self, notify: ProgressCallback, stop: Callable[[], bool], total: int) -> bool:
        """Take the device; while another run holds it, say so and keep polling the stop flag."""
        if self._lock.acquire(blocking=False):
            return True
        notify(Progress(0, total, 0.0, 0.0, None, waiting=True))
        while not self._lock.acquire(timeout=0.2):
            if stop():
                return False
        return True

    def _ranking(self, query, instruction, results, mode, start, cancelled) -> Ranking:
        return Ranking(
            query=query,
            instruction=instruction,
            results=tuple(results),
            mode=mode,
            elapsed_s=time.perf_counter() - start,
            cancelled=cancelled,
            model=self.info.name,
            is_demo=self.info.is_demo,
        )


def _to_result(outcome: Outcome) -> ImageResult:
    item = outcome.item
    return ImageResult(
        index=item.index,
        name=item.name,
        score=outcome.score,
        width=item.size.width,
        height=item.size.height,
        visual_tokens=item.visual_tokens,
        error=outcome.error,
    )


def _as_stop_callable(flag: StopFlag | None) -> Callable[[], bool]:
    if flag is None:
        return lambda: False
    if isinstance(flag, threading.Event):
        return flag.is_set
    return flag
