"""Keeping an index in step with folders: embed what is new or changed, drop what is gone, say how
many of each.

Change detection, cheapest test first:
1. size and modification time (``mtime_ns``) as recorded: equal means unchanged, and the file is
   not even opened (a rescan of an unchanged library reads directories only);
2. otherwise the content's SHA-256, over the bytes that are read for decoding anyway: equal to the
   recorded one means unchanged (a restore, ``cp -p`` or ``touch`` that kept the bytes: only the
   record's size and time are updated, the vector stays);
3. otherwise the image is decoded and embedded.
A file that could not be read or decoded gets a row with its error (one sentence) and is tried
again on the next update. Rows under the updated folders whose file is gone are removed first.

Work flows in chunks: the images of a chunk are prepared on the engine's worker pool
(``pipeline.RowFeeder``: reading, hashing, decoding at reduced JPEG scale, the processor) a bounded
number ahead of the model, embedded in batches, and written in one commit. Memory is bounded by the
chunk, not the library; a stop (``should_stop``, Ctrl-C) keeps every committed chunk.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from ..execution import ProgressClock
from ..images import ImageError, read_file
from ..inputs import find_images
from ..pipeline import RowFeeder, available_cpus
from ..results import Progress
from .embedder import Embedder
from .store import Index, IndexStoreError, key_of, row

CHUNK = 256  # images per commit: the work a crash can lose
BATCH_CPU, BATCH_CUDA = 8, 64  # images per forward


@dataclass
class IndexReport:
    """What an update did. ``errors`` counts the files under the updated folders that have no vector
    (unreadable, not decodable), old or new."""

    added: int = 0
    changed: int = 0
    removed: int = 0
    unchanged: int = 0
    errors: int = 0
    embedded: int = 0  # images run through the embedder (the rest were reused or unchanged)
    pending: int = 0  # new or changed files not reached (a stop)
    indexed: int = 0  # vectors in the index afterwards
    elapsed_s: float = 0.0
    cancelled: bool = False
    skipped: list[tuple[str, str]] = field(default_factory=list)  # entries not taken (not images, ...)

    def summary(self) -> str:
        text = (f"{self.added} added, {self.changed} changed, {self.removed} removed, {self.unchanged} unchanged, "
                f"{self.errors} errors; {self.embedded} embedded in {self.elapsed_s:.1f} s; {self.indexed} images indexed")
        if self.pending:
            text += f"; stopped with {self.pending} not indexed yet (run again to finish)"
        return text

    def record(self) -> dict:
        return {key: getattr(self, key) for key in (
            "added", "changed", "removed", "unchanged", "errors", "embedded", "pending", "indexed", "elapsed_s",
            "cancelled",
        )}


@dataclass(frozen=True)
class _Candidate:
    key: str
    relative: str
    path: str
    size: int
    mtime_ns: int
    known: bool  # the path has a row already


@dataclass(frozen=True)
class _Prepared:
    sha256: str
    inputs: dict | None  # the embedder's inputs; None when a vector is reused


def relative_key(path: str, root: str) -> str:
    """The key of ``path`` under ``root``; IndexStoreError when it lies outside."""
    relative = os.path.relpath(os.path.abspath(path), root)
    if relative == os.curdir:
        return ""
    if relative == os.pardir or relative.startswith(os.pardir + os.sep):
        raise IndexStoreError(f"{path} is outside the index's root folder {root}")
    return relative


def scope_keys(paths: Sequence[str], root: str) -> list[str]:
    """The keys an update or a search covers: a folder's ends in "/", the root's is ""."""
    keys = []
    for path in paths:
        relative = relative_key(path, root)
        key = key_of(relative)
        keys.append(key + "/" if os.path.isdir(path) and key else key)
    return keys


def update_index(
    index: Index,
    embedder: Embedder,
    paths: Sequence[str],
    *,
    progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    workers: int | None = None,
    chunk: int = CHUNK,
) -> IndexReport:
    """Bring the index in step with ``paths`` (folders searched recursively, or files, inside the
    index's root). Raises IndexStoreError for a path outside the root or a locked index."""
    if embedder.info.name != index.embedder:
        raise IndexStoreError(
            f"this index was built with the embedder {index.embedder}, not {embedder.info.name}: "
            "use the same one, or build a new index in another folder"
        )
    start = time.perf_counter()
    root = str(index.root)
    scope = scope_keys(paths, root)
    stop = should_stop or (lambda: False)
    notify = progress or (lambda _event: None)
    report = IndexReport()
    with index.writing():
        found = find_images(paths)
        report.skipped = found.skipped
        known = {r["path"]: r for r in index.rows(scope).to_pylist()}
        candidates, seen = [], set()
        for path in found.images:
            relative = relative_key(path, root)
            key = key_of(relative)
            if key in seen:
                continue  # the same file reached through two of the given paths
            seen.add(key)
            try:
                info = os.stat(path)
                size, mtime = info.st_size, info.st_mtime_ns
            except OSError:
                size = mtime = -1  # read_file says why, as a row
            old = known.get(key)
            if old is not None and old["error"] is None and (old["size"], old["mtime_ns"]) == (size, mtime):
                report.unchanged += 1
                continue
            candidates.append(_Candidate(key, relative, path, size, mtime, old is not None))
        gone = [key for key in known if key not in seen]
        index.delete(gone)
        report.removed = len(gone)
        _embed(index, embedder, candidates, known, report, notify, stop, workers or available_cpus(), chunk)
        report.errors = index.count_errors(scope)
        index.finish()
        report.indexed = index.count()
    report.elapsed_s = time.perf_counter() - start
    return report


def _embed(index, embedder, candidates, known, report, notify, stop, workers, chunk) -> None:
    clock = ProgressClock(len(candidates))
    notify(Progress(0, len(candidates), 0.0, 0.0, None))
    batch_size = BATCH_CUDA if embedder.info.device.startswith("cuda") else BATCH_CPU

    def prepare(candidate: _Candidate) -> _Prepared:
        data = read_file(candidate.path)  # read once: hashed, then decoded from memory
        digest = hashlib.sha256(data).hexdigest()
        old = known.get(candidate.key)
        if old is not None and old["error"] is None and old["sha256"] == digest:
            return _Prepared(digest, None)  # same bytes, new size or time: the vector stays
        return _Prepared(digest, embedder.prepare(data))

    for first in range(0, len(candidates), chunk):
        part = candidates[first:first + chunk]
        rows: list[dict] = []
        waiting: list[tuple[_Candidate, _Prepared]] = []

        def flush() -> None:
            if waiting:
                vectors = embedder.embed_prepared([p.inputs for _c, p in waiting])
                rows.extend(_row(c, p.sha256, v) for (c, p), v in zip(waiting, vectors))
                _count(report, [c for c, _p in waiting], changed=True)
                report.embedded += len(waiting)
                elapsed, rate, eta = clock.advance(len(waiting))
                notify(Progress(clock.done, clock.total, elapsed, rate, eta))
                waiting.clear()

        with RowFeeder(part, prepare, workers) as feeder:
            for candidate in part:
                if stop():
                    report.cancelled = True
                    break
                try:
                    prepared = feeder.get(candidate)
                except ImageError as exc:
                    rows.append(_row(candidate, None, None, str(exc)))
                    clock.advance(1)
                    continue
                finally:
                    feeder.release(candidate)
                if prepared.inputs is None:
                    vector = index.vectors_by_hash([prepared.sha256]).get(prepared.sha256)
                    rows.append(_row(candidate, prepared.sha256, vector))
                    _count(report, [candidate], changed=False)
                    clock.advance(1)
                    continue
                waiting.append((candidate, prepared))
                if len(waiting) >= batch_size:
                    flush()
            flush()
        index.put(rows)  # one commit per chunk: a stop or a crash keeps it
        if report.cancelled:
            break
    report.pending = len(candidates) - clock.done


def _count(report: IndexReport, candidates: list[_Candidate], changed: bool) -> None:
    for candidate in candidates:
        if not candidate.known:
            report.added += 1
        elif changed:
            report.changed += 1
        else:
            report.unchanged += 1


def _row(candidate: _Candidate, digest, vector, error: str | None = None) -> dict:
    return row(candidate.key, candidate.relative, digest, candidate.size, candidate.mtime_ns, vector, error)
