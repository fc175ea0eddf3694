"""What a run produces: one result per input image, progress events, and the ranking rule."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    from .settings import RunSettings


@dataclass(frozen=True)
class ImageResult:
    """The outcome for one input image. ``score`` is p("yes") in [0, 1]; ``rank`` is 1 for the best."""

    index: int  # position in the caller's input list
    name: str
    score: float | None = None
    rank: int | None = None
    width: int | None = None  # the file's own size (orientation applied)
    height: int | None = None
    model_width: int | None = None  # the size the model saw, after resizing
    model_height: int | None = None
    visual_tokens: int | None = None
    error: str | None = None
    retrieval_rank: int | None = None  # search then rerank: the place the first stage gave it (1 = best)
    similarity: float | None = None  # and the first stage's cosine similarity
    tokens: int | None = None  # the model's input for this pair: prompt, query (image) and this image
    # Its vision features came from the feature cache (True) or were computed (False); None: no cache.
    cached: bool | None = None

    @property
    def status(self) -> str:
        if self.error is not None:
            return "error"
        return "scored" if self.score is not None else "pending"


def ranked(results: Iterable[ImageResult]) -> list[ImageResult]:
    """Scored results by score (best first, ties by input order) with ranks 1..n, then errors, then
    results not scored yet. The one ranking rule for the app, the CLI and exports."""
    results = list(results)
    scored = sorted((r for r in results if r.status == "scored"), key=lambda r: (-r.score, r.index))
    rest = sorted((r for r in results if r.status != "scored"), key=lambda r: (r.status != "error", r.index))
    return [dataclasses.replace(r, rank=i) for i, r in enumerate(scored, 1)] + [
        dataclasses.replace(r, rank=None) for r in rest
    ]


def cache_counts(results: Iterable[ImageResult | None]) -> tuple[int | None, int | None]:
    """(hits, misses) of the feature cache over these results; (None, None) when none used it."""
    flags = [r.cached for r in results if r is not None and r.cached is not None]
    if not flags:
        return None, None
    hits = sum(flags)
    return hits, len(flags) - hits


@dataclass(frozen=True)
class Ranking:
    """A finished (or stopped) run. ``results`` holds one entry per input, in input order."""

    query: str
    instruction: str
    results: tuple[ImageResult, ...]
    mode: str  # the execution mode actually used
    elapsed_s: float
    cancelled: bool = False
    model: str = ""
    is_demo: bool = False
    # Set when an unexpected error stopped the run ("RuntimeError: ..."): what finished is kept, the
    # rest stays pending.
    error: str | None = None
    settings: "RunSettings | None" = None  # the run's whole settings, recorded in every output
    quantization: str | None = None  # the weights actually loaded ("none", "8bit", "4bit")
    retrieval: object | None = None  # search then rerank: what the first stage did (retrieval.search.Retrieval)

    @property
    def not_retrieved(self) -> int:
        """Images the first stage left out: not scored, by design."""
        return self.retrieval.not_retrieved if self.retrieval is not None else 0

    def ranked(self) -> list[ImageResult]:
        return ranked(self.results)

    @property
    def scored(self) -> list[ImageResult]:
        return [r for r in self.results if r.status == "scored"]

    @property
    def errors(self) -> list[ImageResult]:
        return [r for r in self.results if r.status == "error"]

    @property
    def pending(self) -> list[ImageResult]:
        return [r for r in self.results if r.status == "pending"]

    @property
    def cache_hits(self) -> int | None:
        """Images whose vision features came from the feature cache; None when it was not used."""
        return cache_counts(self.results)[0]

    @property
    def cache_misses(self) -> int | None:
        """Images whose vision features were computed (and stored); None when the cache was not used."""
        return cache_counts(self.results)[1]


@dataclass(frozen=True)
class Progress:
    """Sent to the progress callback after every image (sequential) or batch (batched)."""

    done: int  # images finished, scored or failed
    total: int
    elapsed_s: float
    images_per_s: float
    eta_s: float | None
    new_results: tuple[ImageResult, ...] = field(default=())
    batch_size: int = 0
    token_budget: int | None = None
    waiting: bool = False  # another run holds the model; this one is queued
    queue_position: int | None = None  # while waiting: 1 = next to run
    cache_hits: int | None = None  # so far, when the feature cache is used
    cache_misses: int | None = None

    def describe(self) -> str:
        """'37/120 · 4.2 img/s · ETA 20 s · cache 30 hits, 7 misses'."""
        if self.waiting:
            if self.queue_position:
                return f"waiting for other runs to finish (place {self.queue_position} in the queue)…"
            return "waiting for another run to finish…"
        text = f"{self.done}/{self.total} · {self.images_per_s:.1f} img/s"
        if self.eta_s is not None and self.done < self.total:
            text += f" · ETA {format_seconds(self.eta_s)}"
        if self.cache_hits is not None:
            text += f" · cache {describe_cache(self.cache_hits, self.cache_misses)}"
        return text


def describe_cache(hits: int, misses: int) -> str:
    """'30 hits, 7 misses' (the CLI's summary line and the progress text)."""
    return f"{hits} hit{'s' * (hits != 1)}, {misses} miss{'es' * (misses != 1)}"


def format_seconds(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
