"""The execution policy: how images are grouped into forwards, and what happens when memory runs out.

The one rule: a run ends with every input accounted for -- scored, errored or pending -- whatever
happens. An image that cannot be decoded or preprocessed gets its own error; an unexpected error in a
forward propagates (the caller keeps what finished); the rest stay pending.

- ``sequential``: the original memory-safe mode. One image per forward, then ``torch.cuda.empty_cache()``
  and ``gc.collect()``. Peak device memory stays flat whatever the number of images.
- ``batched``: images sorted by token count (largest first, so an over-large budget is found out on
  the first batch) and packed into batches under a token budget.

Both modes take their rows from a RowFeeder: decoding and preprocessing run on a pool of worker
threads, in this order, a bounded number ahead of the model. On out-of-memory the failed batch's
tensors are released, the budget halves and the same (already prepared) images are retried; an image
too large for the budget runs alone, and every success grows the budget back quickly. An image out of
memory even alone is retried once at the end of the run, after memory is freed, before it gets an
error. Every image is scored exactly once or gets an error.

Several runs may share one pass (``Reranker.run_jobs``): their images are planned, sorted and
batched together, each row prepared by its own run's scorer. ``dropped(item)`` tells that an
image's run was stopped on its own (its client went away): such images are left pending, never
prepared nor scored, while the other runs go on.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

from .gpu import device_memory_high, free_cached_memory, free_device_bytes
from .images import ImageError
from .pipeline import RowFeeder, available_cpus
from .scoring import Batch, PlannedImage, PreparedRow

MODES = ("auto", "sequential", "batched")
# Share of the memory free after loading that batches may fill with activations.
MEMORY_SHARE = 0.6
# Safety factor on the per-token activation estimate (allocator slack, attention workspaces).
ESTIMATE_SAFETY = 2.0
MAX_BATCH_IMAGES = 64
MAX_TOKENS_CUDA = 128 * 1024
# A budget ceiling set by an out-of-memory is lifted after this many successes in a row: OOMs on a
# shared GPU are often transient (another process's peak).
FORGET_CEILING_AFTER = 12
ALONE_OOM_MESSAGE = (
    "not enough GPU memory to score this image even on its own; lower the resolution (max pixels) "
    "or free GPU memory used by other programs"
)


@dataclass(frozen=True)
class Outcome:
    item: PlannedImage
    score: float | None = None
    error: str | None = None
    row: PreparedRow | None = None  # what the model saw, when it got that far


class Scorer(Protocol):
    def prepare_row(self, item: PlannedImage) -> PreparedRow: ...
    def collate(self, rows: list[PreparedRow]) -> Batch: ...
    def forward(self, batch: Batch) -> list[float]: ...

    @property
    def device(self): ...


Emit = Callable[[list[Outcome], int, "int | None"], None]  # outcomes, batch size, token budget
ShouldStop = Callable[[], bool]
Dropped = Callable[[PlannedImage], bool]


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA out-of-memory, and the CPU allocator's failure (which torch raises as a RuntimeError)."""
    import torch

    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def activation_bytes_per_token(config, dtype_bytes: int) -> float:
    """Peak working memory per sequence token of one forward without KV cache, estimated from the
    architecture: the widest point of a decoder layer (residual, norm, q/k/v, attention output,
    gate/up/activation of the MLP), plus the vision tower's four patches behind each visual token."""
    text = getattr(config, "text_config", config)
    vision = getattr(config, "vision_config", None)
    per_token = 5 * text.hidden_size + 3 * text.intermediate_size
    if vision is not None:
        merge = getattr(vision, "spatial_merge_size", 2) ** 2
        per_token += merge * (5 * vision.hidden_size + 3 * vision.intermediate_size)
    return per_token * dtype_bytes * ESTIMATE_SAFETY


def initial_token_budget(device, config, dtype_bytes: int) -> int:
    """Tokens per batch that fit in the memory left after loading the model. On CPU, one image per
    forward: batching buys nothing there and padding costs (measured, docs/benchmarks.md)."""
    if getattr(device, "type", None) != "cuda":
        return 1
    free = free_device_bytes(device)
    budget = int(free * MEMORY_SHARE / activation_bytes_per_token(config, dtype_bytes))
    return max(1, min(budget, MAX_TOKENS_CUDA))


class TokenBudget:
    """Halves on out-of-memory; doubles back on every success, up to a ceiling just under what failed
    (but never under a size that has succeeded), a ceiling itself forgotten after a run of successes:
    out-of-memory on a shared GPU is often transient (another process's peak)."""

    def __init__(self, tokens: int):
        self.tokens = self.initial = max(1, tokens)
        self.ceiling = self.initial
        self.largest_success = 0
        self._streak = 0

    def shrink(self, failed_tokens: int) -> None:
        self.ceiling = max(1, self.largest_success, min(self.ceiling, int(failed_tokens * 0.9)))
        self.tokens = max(1, min(self.tokens, failed_tokens) // 2)
        self._streak = 0

    def success(self, used_tokens: int) -> None:
        self.largest_success = max(self.largest_success, used_tokens)
        self._streak += 1
        if self._streak >= FORGET_CEILING_AFTER:
            self.ceiling = self.initial
        self.tokens = max(self.tokens, min(self.ceiling, self.tokens * 2))


class _Run:
    """State shared by both policies: the feeder, deferred images, and how outcomes are reported."""

    def __init__(
        self, order: Sequence[PlannedImage], scorer: Scorer, emit: Emit, workers: int | None, dropped: Dropped | None
    ):
        self.scorer = scorer
        self.emit = emit
        self.dropped = dropped or (lambda _item: False)
        self.feeder = RowFeeder(order, scorer.prepare_row, workers or available_cpus(), skip=self.dropped)
        self.deferred: list[PlannedImage] = []  # out of memory even alone: one more try at the end

    def rows(self, items: list[PlannedImage]) -> tuple[list[PreparedRow], list[Outcome]]:
        """Prepared rows for the items; an image whose preparation failed gets its error here."""
        rows, failures = [], []
        for item in items:
            try:
                rows.append(self.feeder.get(item))
                continue
            except ImageError as exc:
                message = str(exc)
            except Exception as exc:
                if is_out_of_memory(exc):
                    message = "not enough memory to preprocess this image; lower the resolution"
                else:
                    message = f"the image could not be preprocessed ({describe_error(exc)})"
            self.feeder.release(item)
            failures.append(Outcome(item, error=message))
        return rows, failures

    def forward(self, rows: list[PreparedRow]) -> list[float] | None:
        """Scores, or None on out-of-memory (anything else propagates)."""
        try:
            return self.scorer.forward(self.scorer.collate(rows))
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
        return None  # outside the except block: the traceback no longer pins the forward's tensors

    def finish(self, rows: list[PreparedRow], scores: list[float], batch_size: int, budget: int | None) -> None:
        outcomes = [Outcome(row.item, score=s, row=row) for row, s in zip(rows, scores)]
        for row in rows:
            self.feeder.release(row.item)
        self.emit(outcomes, batch_size, budget)

    def defer(self, row: PreparedRow) -> None:
        self.deferred.append(row.item)
        self.feeder.release(row.item)  # not kept while others run; prepared again for the retry

    def retry_deferred(self, should_stop: ShouldStop) -> bool:
        """Each image that ran out of memory alone, once more after memory is freed. True if stopped."""
        while self.deferred:
            if should_stop():
                return True
            item = self.deferred.pop(0)
            if self.dropped(item):
                continue
            free_cached_memory()
            rows, failures = self.rows([item])
            if failures:
                self.emit(failures, 1, None)
                continue
            scores = self.forward(rows)
            free_cached_memory()
            if scores is None:
                self.feeder.release(item)
                self.emit([Outcome(item, error=ALONE_OOM_MESSAGE, row=rows[0])], 1, None)
            else:
                self.finish(rows, scores, 1, None)
        return False


def run_sequential(
    items: Sequence[PlannedImage],
    scorer: Scorer,
    emit: Emit,
    should_stop: ShouldStop,
    workers: int | None = None,
    dropped: Dropped | None = None,
) -> bool:
    """Score one image per forward, memory freed after each. Returns True when stopped early."""
    run = _Run(items, scorer, emit, workers, dropped)
    with run.feeder:
        for item in items:
            if should_stop():
                return True
            if run.dropped(item):
                continue
            rows, failures = run.rows([item])
            if failures:
                emit(failures, 1, None)
                continue
            scores = run.forward(rows)
            if scores is None:
                run.defer(rows[0])
            else:
                run.finish(rows, scores, 1, None)
            free_cached_memory()  # the memory-safe step: empty_cache() and gc.collect() after each image
        return run.retry_deferred(should_stop)


def run_batched(
    items: Sequence[PlannedImage],
    scorer: Scorer,
    emit: Emit,
    should_stop: ShouldStop,
    token_budget: int,
    max_batch_images: int = MAX_BATCH_IMAGES,
    workers: int | None = None,
    dropped: Dropped | None = None,
) -> bool:
    """Score in token-budgeted batches, rows prepared ahead in parallel. Returns True when stopped early."""
    order = sorted(items, key=lambda i: (-i.sequence_tokens, i.index))
    pending = collections.deque(order)
    budget = TokenBudget(token_budget)

    def take() -> list[PlannedImage]:
        fits = budget.tokens // pending[0].sequence_tokens  # largest first: the first item sets the row length
        count = max(1, min(fits, max_batch_images, len(pending)))
        return [pending.popleft() for _ in range(count)]

    run = _Run(order, scorer, emit, workers, dropped)
    with run.feeder:
        while pending:
            if should_stop():
                return True
            _forget_dropped(pending, run)
            if not pending:
                break
            batch_items = take()
            # Hold this batch and the next one's worth of rows: the next batch is prepared during this forward.
            run.feeder.window = max(run.feeder.window, 2 * len(batch_items))
            rows, failures = run.rows(batch_items)
            if failures:
                emit(failures, len(batch_items), budget.tokens)
            if not rows:
                continue
            scores = run.forward(rows)
            if scores is None:
                free_cached_memory()
                budget.shrink(len(rows) * max(r.length for r in rows))
                if len(rows) == 1:
                    run.defer(rows[0])
                else:
                    pending.extendleft(reversed([r.item for r in rows]))  # retried first, still prepared
                continue
            budget.success(len(rows) * max(r.length for r in rows))
            run.finish(rows, scores, len(batch_items), budget.tokens)
            if device_memory_high(scorer.device):
                free_cached_memory()
        return run.retry_deferred(should_stop)


def _forget_dropped(pending: collections.deque, run: _Run) -> None:
    """Images of runs stopped on their own leave the queue (and the feeder), unscored."""
    kept = [item for item in pending if not run.dropped(item)]
    if len(kept) == len(pending):
        return
    for item in pending:
        if run.dropped(item):
            run.feeder.release(item)
    pending.clear()
    pending.extend(kept)


def describe_error(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


Work = float | tuple[float, ...]  # what a step finished: one measure, or several (tokens, pixels)
MIN_HALF_LIFE_S = 5.0
HALF_LIFE_SHARE = 0.5


class ProgressClock:
    """Rate and ETA of a run, from the work its images need and the time the work has taken so far.

    Work is measured in one or more units (the engine gives two: sequence tokens, the model's work,
    and pixels decoded, the CPU's): a 12-MP photo and a screenshot of the same token count cost
    very different times on a machine whose CPU bounds the run, the same time on a fast GPU. How
    many seconds a unit of each costs is measured as the run goes: the steps since the first are
    fitted to ``seconds = sum(cost[i] * work[i])`` (least squares, costs not negative, a step's
    weight halving every half of the time since the first step, at least MIN_HALF_LIFE_S: the
    recent pace counts most, a burst does not decide), and the ETA is that fit applied to the work
    left. The first step is not fitted: it also holds the start (the first decode, the model's
    warm-up); until a second step comes, the ETA is the elapsed time scaled by the work left.
    """

    def __init__(self, total: int, total_work: Work | None = None, *, now: Callable[[], float] = time.perf_counter):
        self.total = total
        self._total = _vector(total_work if total_work is not None else total)
        self._done = [0.0] * len(self._total)
        self.done = 0
        self.work_done = 0.0  # of the first measure
        self._now = now
        self.start = now()
        self._steps: list[tuple[float, float, list[float]]] = []  # (time, seconds since the step before, work)

    @property
    def total_work(self) -> tuple[float, ...]:
        return tuple(self._total)

    def advance(self, count: int, work: Work | None = None) -> tuple[float, float, float | None]:
        """Record ``count`` images finished (with their ``work``, default: one unit each); returns
        (seconds elapsed, images per second, seconds left or None)."""
        now = self._now()
        step = _vector(work if work is not None else count, len(self._total))
        previous = self._steps[-1][0] if self._steps else None
        self.done += count
        self._done = [d + w for d, w in zip(self._done, step)]
        self.work_done = self._done[0]
        self._steps.append((now, now - previous if previous is not None else 0.0, step))
        elapsed = now - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        return elapsed, rate, self._eta(now, elapsed)

    def _eta(self, now: float, elapsed: float) -> float | None:
        left = [max(0.0, t - d) / t if t else 0.0 for t, d in zip(self._total, self._done)]  # shares of each total
        if not any(left):
            return 0.0
        costs = self._fitted_costs(now)
        if costs is not None:
            return sum(c * l for c, l in zip(costs, left))
        done = [d / t for t, d in zip(self._total, self._done) if t and d]  # one step so far
        if not done or elapsed <= 0:
            return None
        shares_left = [l for t, d, l in zip(self._total, self._done, left) if t and d]
        return elapsed * sum(l / d for l, d in zip(shares_left, done)) / len(done)

    def _fitted_costs(self, now: float) -> list[float] | None:
        """Seconds per whole run's worth of each measure, fitted to the steps after the first."""
        import numpy as np

        steps = self._steps[1:]
        if not steps:
            return None
        half_life = max(MIN_HALF_LIFE_S, (now - self._steps[0][0]) * HALF_LIFE_SHARE)
        root_weight = np.array([0.5 ** ((now - t) / half_life / 2) for t, _, _ in steps])
        seconds = np.array([dt for _, dt, _ in steps]) * root_weight
        shares = np.array([[w / t if t else 0.0 for w, t in zip(work, self._total)] for _, _, work in steps])
        shares *= root_weight[:, None]
        best: tuple[float, list[float]] | None = None
        for used in _measure_sets(len(self._total)):  # least squares, keeping only fits without a negative cost
            costs = np.linalg.lstsq(shares[:, used], seconds, rcond=None)[0]
            if (costs < 0).any():
                continue
            error = float(np.sum((shares[:, used] @ costs - seconds) ** 2))
            if best is None or error < best[0] - 1e-12:
                full = [0.0] * len(self._total)
                for index, cost in zip(used, costs):
                    full[index] = float(cost)
                best = (error, full)
        return None if best is None else best[1]


def _vector(work: Work, size: int | None = None) -> list[float]:
    values = [float(w) for w in work] if isinstance(work, tuple) else [float(work)]
    return values if size is None else (values + [0.0] * size)[:size]


def _measure_sets(size: int) -> list[list[int]]:
    """Every non-empty set of measures, the largest first."""
    return sorted(([i for i in range(size) if mask >> i & 1] for mask in range(1, 1 << size)), key=len, reverse=True)
