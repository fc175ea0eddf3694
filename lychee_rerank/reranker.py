"""The public engine: ``Reranker.load(...)`` then ``reranker.rank(query, images)``."""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Callable, Sequence

from .execution import (
    Outcome,
    describe_error,
    initial_token_budget,
    run_batched,
    run_sequential,
)
from .checks import InputError, check_text, load_query_image
from .feature_cache import CacheUnavailable, FeatureCache, RunCache, default_cache_dir, vision_identity
from .images import ImageError, ImageSource, probe_image, source_name
from .jobs import Job, JobRun, JobsScorer, PictureCallback, ProgressCallback, StopFlag, execution, work_of
from .loading import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS, ModelInfo, ModelLoadError, load_model
from .pipeline import RowFeeder, available_cpus
from .results import ImageResult, Progress, Ranking
from .settings import ModelSettings, RunSettings
from .scoring import PairScorer, PlannedImage, QueryTooLongError

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)


class Reranker:
    """A loaded Lychee reranker. One instance may serve many threads: runs take the device one at a
    time, in the order they asked for it (callers waiting are told their place in the queue)."""

    def __init__(
        self,
        model,
        processor,
        info: ModelInfo,
        *,
        min_pixels: int = DEFAULT_MIN_PIXELS,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        model_settings: ModelSettings | None = None,
    ):
        self.model = model
        self.processor = processor
        self.info = info
        self.min_pixels = min_pixels
        self.max_pixels = max_pixels
        # What was asked for when loading: settings for another model are refused by run().
        self.model_settings = model_settings or ModelSettings.build(info.name, dtype=info.dtype)
        self._turns = threading.Condition()
        self._queue: collections.deque[object] = collections.deque()  # the head holds the device
        self._identity: str | None = None  # the vision tower's, for the feature cache ("" if unusable)
        self._identity_lock = threading.Lock()

    @classmethod
    def load(
        cls,
        model: str | ModelSettings | None = None,
        *,
        dtype: str = "auto",
        attention: str = "auto",
        device_map: str | dict | None = "auto",
        min_pixels: int = DEFAULT_MIN_PIXELS,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        quantize: str = "auto",
    ) -> "Reranker":
        """Load a model by hub id, directory or 'demo' (default: $LYCHEE_MODEL or the real model), or
        as a run's ``ModelSettings`` say (then dtype, attention and quantize come from them).
        ``quantize``: "auto" (by free GPU memory; none on CPU), "none", "8bit" or "4bit".
        Raises ModelLoadError with a one-sentence explanation."""
        if not isinstance(model, ModelSettings):
            try:
                model = ModelSettings.build(model, dtype=dtype, quantize=quantize, attention=attention)
            except InputError as exc:
                raise ModelLoadError(str(exc)) from None
        loaded_model, processor, info = load_model(
            model.name, dtype=model.dtype, attention=model.attention, device_map=device_map, quantize=model.quantize
        )
        return cls(loaded_model, processor, info, min_pixels=min_pixels, max_pixels=max_pixels, model_settings=model)

    @property
    def busy(self) -> bool:
        return bool(self._queue)

    def settings(self, query: str | None = "", **options) -> RunSettings:
        """Checked RunSettings for this reranker's model (InputError, one sentence). ``options`` are
        RunSettings.build's; the resolution defaults to this reranker's."""
        options.setdefault("min_pixels", None)
        options.setdefault("max_pixels", None)
        options["min_pixels"] = options["min_pixels"] or self.min_pixels
        options["max_pixels"] = options["max_pixels"] or self.max_pixels
        return RunSettings.build(query, model=self.model_settings, **options)

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
        preprocess: str = "exact",
        workers: int | None = None,
        cache: bool | str | os.PathLike | None = None,
        progress: ProgressCallback | None = None,
        should_stop: StopFlag | None = None,
    ) -> Ranking:
        """Score every image against the query; results come back in input order (see Ranking.ranked()).
        A shorthand for ``run(self.settings(query, ...), images, ...)``.

        ``progress`` is called after every image or batch, with the results just finished;
        ``should_stop`` is polled between forwards and stops the run early, keeping what is done.
        ``preprocess``: "exact" (the model card's image path) or "fast" (JPEG draft decoding);
        ``workers``: preprocessing threads (default: the CPUs this process may use);
        ``cache``: the vision-feature cache -- off (None, the default), True (its default folder,
        ``$LYCHEE_CACHE/features``) or a folder.
        """
        cache_dir = default_cache_dir() if cache is True else (cache or None)
        settings = self.settings(
            query, query_image=query_image, instruction=instruction, mode=mode, max_pixels=max_pixels,
            min_pixels=min_pixels, token_budget=token_budget, preprocess=preprocess, workers=workers,
            cache_dir=cache_dir,
        )
        return self.run(settings, images, names=names, progress=progress, should_stop=should_stop)

    def run(
        self,
        settings: RunSettings,
        images: Sequence[ImageSource],
        *,
        names: Sequence[str] | None = None,
        progress: ProgressCallback | None = None,
        should_stop: StopFlag | None = None,
        on_picture: PictureCallback | None = None,
    ) -> Ranking:
        """Score every image under ``settings`` (the one object every front end builds); results come
        back in input order.

        ``on_picture(index, picture, size)``, optional, is called from the preprocessing threads
        with each image as the model sees it (upright, at model size) and the size it was decoded at
        (its true aspect ratio): a front end makes its thumbnails from it instead of decoding the
        file again. An error in it is ignored: it never costs a score.

        Every input is accounted for, whatever happens: scored, errored, or pending. Bad settings (or
        settings made for another model) raise InputError before any work; an unexpected error during
        the run stops it and is recorded in ``Ranking.error``, with every finished score kept.
        """
        return self.run_jobs([Job(settings, images, names, progress, should_stop, on_picture)])[0]

    def run_jobs(self, jobs: Sequence[Job]) -> list[Ranking]:
        """Several runs in one pass (a service's concurrent requests): their images share forwards
        under one token budget, each row with its own run's query, instruction and resolution, so
        each run's scores are those it would get alone. One Ranking per job, in order.

        Each job stops on its own flag (its images are then left pending) and reports its own
        progress; the pass ends when every job is done or stopped. The jobs must share how they
        execute (mode, workers, token budget, feature cache): InputError otherwise, before any work.
        """
        if not jobs:
            return []
        scorer = JobsScorer()
        try:
            for job in jobs:
                scorer.scorers.append(self._checked_scorer(job, jobs[0].settings))
        except BaseException:
            scorer.close()  # the feature caches of the runs checked so far
            raise
        scorers = scorer.scorers
        runs = [JobRun(job, self._results(job)) for job in jobs]
        settings = jobs[0].settings
        used_mode = "sequential" if settings.mode == "sequential" else "batched"

        def notify_all(event: Progress) -> None:
            for run in runs:
                run.notify(event)

        def all_stopped() -> bool:
            return all(run.stop() for run in runs)

        if not self._acquire(notify_all, all_stopped, sum(len(run.results) for run in runs)):
            scorer.close()
            return [self._ranking(run.job.settings, run.results, used_mode, 0.0, cancelled=True) for run in runs]
        start = time.perf_counter()  # ranking time only: waiting in the queue does not count
        cancelled, error = False, None
        try:
            planned: list[PlannedImage] = []
            for number, (run, own) in enumerate(zip(runs, scorers)):
                mine, unreadable = self._plan(own, run.job.images, run.results)
                planned += [dataclasses.replace(item, job=number) for item in mine]
                run.start(mine, unreadable)

            def emit(outcomes: list[Outcome], batch_size: int, budget: int | None) -> None:
                for number, run in enumerate(runs):
                    mine = [o for o in outcomes if o.item.job == number]
                    if mine:
                        run.record([_to_result(o) for o in mine], work_of([o.item for o in mine]),
                                   batch_size, budget)

            # Alone, a run stops as a whole; together, each stops on its own and the others go on.
            dropped = None if len(runs) == 1 else (lambda item: runs[item.job].stop())

            if used_mode == "sequential":
                cancelled = run_sequential(planned, scorer, emit, all_stopped, settings.workers, dropped)
            else:
                token_budget = settings.token_budget
                if token_budget is None:
                    dtype_bytes = self.model.dtype.itemsize
                    token_budget = initial_token_budget(scorer.device, self.model.config, dtype_bytes)
                cancelled = run_batched(
                    planned, scorer, emit, all_stopped, token_budget, workers=settings.workers, dropped=dropped
                )
        except Exception as exc:  # the finished scores survive; the rest stay pending
            log.debug("ranking stopped by an unexpected error", exc_info=True)  # for whoever enables logging
            error = describe_error(exc)
        finally:
            scorer.close()  # the feature cache's writes are done: part of the ranking time
            self._release()
        elapsed = time.perf_counter() - start
        return [
            self._ranking(run.job.settings, run.results, used_mode, elapsed, cancelled or _dropped(run), error)
            for run in runs
        ]

    def prepare_only(self, settings: RunSettings, images: Sequence[ImageSource]) -> int:
        """Run only the CPU side of a ranking (planning, decoding, qwen-vl-utils, the processor) on the
        same worker pool, without the model; returns how many images were prepared. The benchmark's
        preprocessing ceiling."""
        scorer = self._scorer(settings)
        planned, _ = self._plan(scorer, images, self._results(Job(settings, images)))
        order = sorted(planned, key=lambda i: (-i.sequence_tokens, i.index))
        prepared = 0
        try:
            with RowFeeder(order, scorer.prepare_row, settings.workers or available_cpus()) as feeder:
                for item in order:
                    try:
                        feeder.get(item)
                        prepared += 1
                    except Exception:  # counted as not prepared; rank() reports why
                        pass
                    feeder.release(item)
        finally:
            scorer.close()
        return prepared

    # -- internals ------------------------------------------------------------------------------
    def _checked_scorer(self, job: Job, first: RunSettings) -> PairScorer:
        settings = job.settings
        if settings.model != self.model_settings:
            raise InputError(
                f"these settings are for {_describe_model(settings.model)}, but this reranker holds "
                f"{_describe_model(self.model_settings)}"
            )
        if job.names is not None and len(job.names) != len(job.images):
            raise InputError(f"{len(job.names)} names for {len(job.images)} images")
        if execution(settings) != execution(first):
            raise InputError("runs that share forwards must share the mode, the workers, the token budget and the feature cache")
        scorer = self._scorer(settings)
        scorer.on_picture = _guarded(job.on_picture)
        return scorer

    @staticmethod
    def _results(job: Job) -> list[ImageResult]:
        names = job.names
        return [ImageResult(i, names[i] if names is not None else source_name(src, i)) for i, src in enumerate(job.images)]

    def _scorer(self, settings: RunSettings) -> PairScorer:
        """The run's scorer; InputError (one sentence) when the text holds one of this tokenizer's
        own control tokens or leaves no room for an image."""
        tokenizer = self.processor.tokenizer
        special = list(getattr(tokenizer, "all_special_tokens", []) or [])
        special += [t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if getattr(t, "special", False)]
        check_text("the query", settings.query, special)
        check_text("the instruction", settings.instruction, special)
        query_picture = None if settings.query_image is None else load_query_image(settings.query_image.data)
        cache = self._run_cache(settings)
        try:
            return PairScorer(
                self.model, self.processor, settings.query, settings.instruction, query_picture,
                settings.min_pixels, settings.max_pixels, settings.preprocess, cache=cache,
                query_image_bytes=None if settings.query_image is None else settings.query_image.data,
            )
        except QueryTooLongError as exc:
            if cache is not None:
                cache.close()
            raise InputError(str(exc)) from None

    def _run_cache(self, settings: RunSettings) -> RunCache | None:
        """The run's feature cache, or None when off. A folder that cannot be used is a bad setting
        (InputError); a model whose vision tower cannot be identified runs without the cache."""
        if settings.cache_dir is None:
            return None
        try:
            store = FeatureCache(settings.cache_dir)
        except CacheUnavailable as exc:
            raise InputError(str(exc)) from None
        identity = self.vision_identity()
        if identity is None:
            return None
        return RunCache(store, identity, settings.min_pixels, settings.max_pixels, settings.preprocess)

    def vision_identity(self) -> str | None:
        """The digest of the loaded vision tower that the feature cache keys on (computed once), or
        None when it cannot be read (its weights offloaded): the cache is then not used."""
        with self._identity_lock:
            if self._identity is None:
                try:
                    self._identity = vision_identity(self.model, self.processor)
                except CacheUnavailable as exc:
                    log.warning("the feature cache is not used: %s", exc)
                    self._identity = ""
        return self._identity or None

    def _plan(self, scorer: PairScorer, images, results) -> tuple[list[PlannedImage], list[ImageResult]]:
        """Read each file's header: its size and token cost, or its error."""
        planned: list[PlannedImage] = []
        unreadable: list[ImageResult] = []
        for i, source in enumerate(images):
            try:
                size = probe_image(source)
                planned.append(scorer.plan(i, results[i].name, source, size))
            except ImageError as exc:
                unreadable.append(ImageResult(i, results[i].name, error=str(exc)))
        return planned, unreadable

    def _acquire(self, notify: ProgressCallback, stop: Callable[[], bool], total: int) -> bool:
        """Take the device in turn; while others hold or wait for it, report the place in the queue
        and keep polling the stop flag."""
        ticket = object()
        with self._turns:
            self._queue.append(ticket)
        told = None
        try:
            while True:
                with self._turns:
                    place = self._queue.index(ticket)
                    if place and place == told:
                        self._turns.wait(timeout=0.2)
                        place = self._queue.index(ticket)
                if place == 0:
                    return True
                if place != told:
                    notify(Progress(0, total, 0.0, 0.0, None, waiting=True, queue_position=place))
                    told = place
                if stop():
                    self._leave(ticket)
                    return False
        except BaseException:
            self._leave(ticket)
            raise

    def _leave(self, ticket: object) -> None:
        with self._turns:
            if ticket in self._queue:
                self._queue.remove(ticket)
            self._turns.notify_all()

    def _release(self) -> None:
        with self._turns:
            self._queue.popleft()
            self._turns.notify_all()

    def _ranking(self, settings: RunSettings, results, mode, elapsed, cancelled, error=None) -> Ranking:
        return Ranking(
            query=settings.query,
            instruction=settings.instruction,
            results=tuple(results),
            mode=mode,
            elapsed_s=elapsed,
            cancelled=cancelled,
            model=self.info.name,
            is_demo=self.info.is_demo,
            error=error,
            settings=settings,
            quantization=self.info.quantization,
        )


def _describe_model(model: ModelSettings) -> str:
    return f"{model.name} ({model.dtype}, quantisation {model.quantize})"


def _dropped(run: JobRun) -> bool:
    """A job stopped on its own before all its images were done."""
    return run.stopped and any(result.status == "pending" for result in run.results)


def _guarded(on_picture: PictureCallback | None) -> Callable[[PlannedImage, "Image.Image"], None] | None:
    if on_picture is None:
        return None

    def hook(item: PlannedImage, picture: "Image.Image") -> None:
        try:
            on_picture(item.index, picture, (item.size.width, item.size.height))
        except Exception:  # a front end's picture never costs a score
            log.debug("on_picture failed for image %d", item.index, exc_info=True)

    return hook


def _to_result(outcome: Outcome) -> ImageResult:
    item, row = outcome.item, outcome.row
    return ImageResult(
        index=item.index,
        name=item.name,
        score=outcome.score,
        width=item.size.file_width or item.size.width,
        height=item.size.file_height or item.size.height,
        model_width=row.model_size[0] if row else None,
        model_height=row.model_size[1] if row else None,
        visual_tokens=row.visual_tokens if row else item.visual_tokens,
        error=outcome.error,
        tokens=row.length if row else None,
        cached=row.cached if row else None,
    )

