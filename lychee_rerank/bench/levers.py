"""Levers: bench-only switches of things the engine always does, to measure what each one buys.

Each one swaps a name the engine calls (and restores it on exit), so the engine itself carries no
benchmark switches:

- ``--no-overlap`` (or ``--workers 0``): ``RowFeeder`` -> ``InlineRowFeeder``: each row is prepared in
  the calling thread when the forward asks for it (no worker pool, no look-ahead), in ``execution``
  (``rank``) and in ``reranker`` (``prepare_only``, so the ceiling is measured the same way).
- ``--no-gc``: ``free_cached_memory`` -> ``empty_cache_only``: the ``gc.collect()`` after each
  sequential image and on out-of-memory is skipped (``torch.cuda.empty_cache()`` still runs).
- ``--worker-torch-threads N``: each preprocessing worker sets its own torch intra-op thread count
  before its first row (the thread that runs the forward keeps its own).
- ``--full-logits``: the model wrapped so that ``logits_to_keep`` is 0 (logits at every position).
- ``--processor-device cuda``: ``scoring.processor_pixels`` -> a version that moves each image's
  pixels to that device, so the processor's resize, rescale, normalise and patchify run there (the
  torchvision backend works on the tensor's device). Decoding and qwen-vl-utils stay on the CPU.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from typing import Callable, Generic, Hashable, Sequence, TypeVar

from .settings import BenchError

Item = TypeVar("Item", bound=Hashable)
Row = TypeVar("Row")


class FullLogitsModel:
    """The model with ``logits_to_keep`` forced to 0 (logits at every position), as if the engine
    did not ask for the last position only. Everything else is the wrapped model's."""

    def __init__(self, model):
        self._model = model

    def __getattr__(self, name):
        return getattr(self._model, name)

    def __call__(self, *args, **kwargs):
        kwargs["logits_to_keep"] = 0
        return self._model(*args, **kwargs)


class InlineRowFeeder(Generic[Item, Row]):
    """``RowFeeder``'s interface with no pool: ``get(item)`` prepares the row there and then, in the
    calling thread (kept until ``release``, as the engine expects for its out-of-memory retries)."""

    def __init__(self, order: Sequence[Item], prepare: Callable[[Item], Row], workers: int = 1, window: int | None = None,
                 skip: Callable[[Item], bool] | None = None):  # nothing is prepared ahead: nothing to skip
        self._prepare = prepare
        self._rows: dict[Item, Row] = {}
        self.workers = 0
        self.window = 1

    def __enter__(self) -> "InlineRowFeeder[Item, Row]":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def get(self, item: Item) -> Row:
        if item not in self._rows:
            self._rows[item] = self._prepare(item)
        return self._rows[item]

    def release(self, item: Item) -> None:
        self._rows.pop(item, None)

    def close(self) -> None:
        self._rows.clear()


def feeder_with_worker_threads(feeder_class, threads: int):
    """``feeder_class`` whose workers each call ``torch.set_num_threads(threads)`` before their first
    row. OpenMP keeps a thread count per thread: the forward's thread is not affected."""
    import torch

    class WorkerThreadsFeeder(feeder_class):
        def __init__(self, order, prepare, workers, window=None, skip=None):
            configured = threading.local()

            def prepare_with_threads(item):
                if not getattr(configured, "done", False):
                    torch.set_num_threads(threads)
                    configured.done = True
                return prepare(item)

            super().__init__(order, prepare_with_threads, workers, window, skip)

    return WorkerThreadsFeeder


def pixels_on_device(device: str):
    """``processor_pixels`` whose result is moved to ``device`` (the processor then runs there)."""
    from ..preprocess import processor_pixels

    def processor_pixels_on_device(image):
        return processor_pixels(image).to(device)

    return processor_pixels_on_device


def empty_cache_only() -> int:
    """``free_cached_memory`` without its gc.collect() (torch.cuda.empty_cache still runs)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
    return 0


@contextlib.contextmanager
def engine_levers(
    overlap: bool = True,
    gc_collect: bool = True,
    worker_torch_threads: int | None = None,
    processor_device: str | None = None,
):
    """Swap, for the bench only, the names the engine calls (see the module's docstring); restored on exit."""
    from .. import execution, pipeline, reranker, scoring

    feeder = pipeline.RowFeeder
    if not overlap:
        feeder = InlineRowFeeder
    elif worker_torch_threads is not None:
        feeder = feeder_with_worker_threads(pipeline.RowFeeder, worker_torch_threads)
    swaps = []
    if feeder is not pipeline.RowFeeder:
        option = "--no-overlap" if not overlap else "--worker-torch-threads"
        swaps += [(execution, "RowFeeder", feeder, option), (reranker, "RowFeeder", feeder, option)]
    if not gc_collect:
        swaps.append((execution, "free_cached_memory", empty_cache_only, "--no-gc"))
    if processor_device is not None:
        swaps.append((scoring, "processor_pixels", pixels_on_device(processor_device), "--processor-device"))
    originals = []
    try:
        for module, name, replacement, option in swaps:
            if not hasattr(module, name):
                raise BenchError(f"{option} does not work with this version of the engine", code=1)
            originals.append((module, name, getattr(module, name)))
            setattr(module, name, replacement)
        yield
    finally:
        for module, name, original in reversed(originals):
            setattr(module, name, original)


@contextlib.contextmanager
def torch_threads(count: int | None):
    """``torch.set_num_threads(count)`` for the block (nothing when None)."""
    if count is None:
        yield
        return
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
