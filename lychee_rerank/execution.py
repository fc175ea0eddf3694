"""The execution policy: how images are grouped into forwards, and what happens when memory runs out.

- ``sequential``: the original memory-safe mode. One image per forward, then ``torch.cuda.empty_cache()``
  and ``gc.collect()``. Peak memory stays flat whatever the number of images.
- ``batched``: images sorted by token count (largest first, so an over-large budget is found out on
  the first batch) and packed into batches under a token budget; the next batch is decoded and
  preprocessed in a worker thread while the current one runs. On out-of-memory the failed batch's
  tensors are released, the budget halves and the same images are retried; an image too large for
  the budget runs alone, sequential-style. After a run of successes the budget grows back. Every
  image is scored exactly once or gets an error.
"""

from __future__ import annotations

import collections
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

from .gpu import device_memory_high, free_cached_memory, free_device_bytes
from .scoring import PlannedImage, PreparedBatch

MODES = ("auto", "sequential", "batched")
# Share of the memory free after loading that batches may fill with activations.
MEMORY_SHARE = 0.6
# Safety factor on the per-token activation estimate (allocator slack, attention workspaces).
ESTIMATE_SAFETY = 2.0
MAX_BATCH_IMAGES = 64
MAX_TOKENS_CUDA = 128 * 1024
# CPU forwards gain little from big batches; keep progress updates frequent.
MAX_TOKENS_CPU = 8 * 1024
GROW_AFTER_SUCCESSES = 8
GROW_FACTOR = 1.25
ALONE_OOM_MESSAGE = (
    "not enough GPU memory to score this image even on its own; lower the resolution (max pixels) "
    "or free GPU memory used by other programs"
)


@dataclass(frozen=True)
class Outcome:
    item: PlannedImage
    score: float | None = None
    error: str | None = None


class Scorer(Protocol):
    def prepare(self, items: list[PlannedImage]) -> PreparedBatch: ...
    def forward(self, batch: PreparedBatch) -> list[float]: ...

    @property
    def device(self): ...


Emit = Callable[[list[Outcome], int, "int | None"], None]  # outcomes, batch size, token budget
ShouldStop = Callable[[], bool]


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


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
    """Tokens per batch that fit in the memory left after loading the model."""
    free = free_device_bytes(device)
    budget = int(free * MEMORY_SHARE / activation_bytes_per_token(config, dtype_bytes))
    cap = MAX_TOKENS_CUDA if getattr(device, "type", None) == "cuda" else MAX_TOKENS_CPU
    return max(1, min(budget, cap))


class TokenBudget:
    """Halves on out-of-memory; grows back (never past what failed) after a run of successes."""

    def __init__(self, tokens: int):
        self.tokens = max(1, tokens)
        self.ceiling = self.tokens
        self._successes = 0

    def shrink(self, failed_tokens: int) -> None:
        self.ceiling = max(1, min(self.ceiling, int(failed_tokens * 0.9)))
        self.tokens = max(1, failed_tokens // 2)
        self._successes = 0

    def success(self) -> None:
        self._successes += 1
        if self._successes >= GROW_AFTER_SUCCESSES and self.tokens < self.ceiling:
            self.tokens = min(self.ceiling, int(self.tokens * GROW_FACTOR) + 1)
            self._successes = 0


def _failures(batch: PreparedBatch) -> list[Outcome]:
    return [Outcome(item, error=message) for item, message in batch.failures]


def _score_alone(scorer: Scorer, batch: PreparedBatch) -> list[Outcome]:
    """A one-image batch in its own forward, memory released afterwards (the memory-safe step)."""
    outcomes = _failures(batch)
    try:
        if batch.items:
            try:
                (score,) = scorer.forward(batch)
                outcomes.append(Outcome(batch.items[0], score=score))
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                outcomes.append(Outcome(batch.items[0], error=ALONE_OOM_MESSAGE))
    finally:
        batch.release()
    free_cached_memory()  # after the except block: the exception no longer pins the forward's tensors
    return outcomes


def run_sequential(items: Sequence[PlannedImage], scorer: Scorer, emit: Emit, should_stop: ShouldStop) -> bool:
    """Score one image per forward. Returns True when stopped early."""
    for item in items:
        if should_stop():
            return True
        emit(_score_alone(scorer, scorer.prepare([item])), 1, None)
    return False


def run_batched(
    items: Sequence[PlannedImage],
    scorer: Scorer,
    emit: Emit,
    should_stop: ShouldStop,
    token_budget: int,
    max_batch_images: int = MAX_BATCH_IMAGES,
) -> bool:
    """Score in token-budgeted batches with preprocessing overlapped. Returns True when stopped early."""
    pending = collections.deque(sorted(items, key=lambda i: (-i.sequence_tokens, i.index)))
    budget = TokenBudget(token_budget)

    def take() -> list[PlannedImage]:
        if not pending:
            return []
        fits = budget.tokens // pending[0].sequence_tokens  # largest first: the first item sets the row length
        count = max(1, min(fits, max_batch_images, len(pending)))
        return [pending.popleft() for _ in range(count)]

    def put_back(batch_items: list[PlannedImage]) -> None:
        pending.extendleft(reversed(batch_items))

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lychee-prepare") as worker:

        def submit() -> tuple[list[PlannedImage], Future] | None:
            batch_items = take()
            return (batch_items, worker.submit(scorer.prepare, batch_items)) if batch_items else None

        def drop(prefetch: tuple[list[PlannedImage], Future] | None) -> None:
            """Forget a prefetched batch; its images go back to the queue."""
            if prefetch is not None:
                batch_items, future = prefetch
                if not future.cancel():
                    future.result().release()
                put_back(batch_items)

        current = submit()
        while current is not None:
            if should_stop():
                drop(current)
                return True
            batch_items, future = current
            alone = len(batch_items) == 1 and batch_items[0].sequence_tokens > budget.tokens
            if alone:
                # Below one image per batch: this image runs on its own, sequential-style.
                emit(_score_alone(scorer, future.result()), 1, budget.tokens)
                current = submit()
                continue
            batch = future.result()
            following = submit()  # overlap: preprocess the next batch during this forward
            if not batch.items:
                emit(_failures(batch), len(batch_items), budget.tokens)
                current = following
                continue
            try:
                scores = scorer.forward(batch)
            except Exception as exc:
                if not is_out_of_memory(exc):
                    drop(following)
                    raise
                scores = None
            if scores is None:
                # Out of memory; handled outside the except block so the traceback no longer pins
                # the failed forward's tensors.
                failed_tokens = batch.padded_tokens
                failures = _failures(batch)
                drop(following)  # first: the failed batch's images must go back in front of them
                put_back(batch.items)
                batch.release()
                free_cached_memory()
                budget.shrink(failed_tokens)
                if failures:
                    emit(failures, len(failures), budget.tokens)
                current = submit()
                continue
            outcomes = [Outcome(item, score=s) for item, s in zip(batch.items, scores)] + _failures(batch)
            batch.release()
            budget.success()
            if device_memory_high(scorer.device):
                free_cached_memory()
            emit(outcomes, len(batch_items), budget.tokens)
            current = following
    return False


class ProgressClock:
    """Rate and ETA for progress events."""

    def __init__(self, total: int):
        self.total = total
        self.done = 0
        self.start = time.perf_counter()

    def advance(self, count: int) -> tuple[float, float, float | None]:
        self.done += count
        elapsed = time.perf_counter() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else None
        return elapsed, rate, eta
