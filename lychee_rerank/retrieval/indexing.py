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
from ..inputs import FoundImages, find_images
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
class Candidate:
    """A file to read: new, or its size or time changed (or its last try failed)."""

    key: str
    relative: str
    path: str
    size: int
    mtime_ns: int
    known_sha256: str | None  # the recorded content hash of a row without error (None: new, or failed)
    known: bool  # the path has a row already


@dataclass(frozen=True)
class Outcome:
    """What became of a candidate: "embedded", "kept" (same bytes: the recorded vector stays) or "error"."""

    candidate: Candidate
    kind: str
    sha256: str | None = None
    vector: object = None
    error: str | None = None


@dataclass
class Plan:
    """An update's work, from the folders and the rows (no file opened): what to read, what is gone."""

    scope: list[str]
    candidates: list[Candidate]
    gone: list[str]
    unchanged: int
    skipped: list[tuple[str, str]]


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


def plan_update(index: Index, paths: Sequence[str], files: Sequence[str] | None = None) -> Plan:
    """Compare the folders with the rows: the cheap test (size and mtime) decides what to read.
    ``files``: the images under ``paths`` when the caller has already listed them (the app, which
    leaves out links leading out of its data folder); default: ``inputs.find_images(paths)``."""
    root = str(index.root)
    scope = scope_keys(paths, root)
    found = find_images(paths) if files is None else FoundImages(list(files))
    known = {r["path"]: r for r in index.rows(scope).to_pylist()}
    candidates, seen, unchanged = [], set(), 0
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
        healthy = old is not None and old["error"] is None
        if healthy and (old["size"], old["mtime_ns"]) == (size, mtime):
            unchanged += 1
            continue
        candidates.append(Candidate(key, relative, path, size, mtime, old["sha256"] if healthy else None, old is not None))
    return Plan(scope, candidates, [key for key in known if key not in seen], unchanged, found.skipped)


def embed_chunk(
    embedder: Embedder,
    part: Sequence[Candidate],
    workers: int,
    stop: Callable[[], bool] = lambda: False,
    on_batch: Callable[[int], None] = lambda _done: None,
    read: Callable[[str], bytes] = read_file,
) -> list[Outcome]:
    """Read, hash, prepare (on the worker pool, a bounded number ahead) and embed a chunk in
    batches; stops between images when ``stop()`` says so (the outcomes so far are returned).
    ``on_batch(n)`` after each n images finished; ``read`` opens a file (the app's confines it to
    its data folder where it is opened). Used in this process and by Ray replicas."""
    batch_size = BATCH_CUDA if embedder.info.device.startswith("cuda") else BATCH_CPU
    outcomes: list[Outcome] = []
    waiting: list[tuple[Candidate, str, dict]] = []

    def prepare(candidate: Candidate) -> tuple[str, dict | None]:
        data = read(candidate.path)  # read once: hashed, then decoded from memory
        digest = hashlib.sha256(data).hexdigest()
        if digest == candidate.known_sha256:
            return digest, None  # same bytes, new size or time: the vector stays
        return digest, embedder.prepare(data)

    def flush() -> None:
        if waiting:
            vectors = embedder.embed_prepared([inputs for _c, _d, inputs in waiting])
            outcomes.extend(Outcome(c, "embedded", d, v) for (c, d, _i), v in zip(waiting, vectors))
            on_batch(len(waiting))
            waiting.clear()

    with RowFeeder(part, prepare, workers) as feeder:
        for candidate in part:
            if stop():
                break
            try:
                digest, inputs = feeder.get(candidate)
            except ImageError as exc:
                outcomes.append(Outcome(candidate, "error", error=str(exc)))
                on_batch(1)
                continue
            finally:
                feeder.release(candidate)
            if inputs is None:
                outcomes.append(Outcome(candidate, "kept", digest))
                on_batch(1)
                continue
            waiting.append((candidate, digest, inputs))
            if len(waiting) >= batch_size:
                flush()
        flush()
    return outcomes


def write_outcomes(index: Index, outcomes: Sequence[Outcome], report: IndexReport) -> None:
    """Count the outcomes and write them in one commit (a kept file's vector is read back)."""
    kept = index.vectors_by_hash(o.sha256 for o in outcomes if o.kind == "kept")
    rows = []
    for o in outcomes:
        c = o.candidate
        vector = kept.get(o.sha256) if o.kind == "kept" else o.vector
        rows.append(row(c.key, c.relative, o.sha256, c.size, c.mtime_ns, vector, o.error))
        if o.kind == "embedded":
            report.embedded += 1
            report.added, report.changed = report.added + (not c.known), report.changed + c.known
        elif o.kind == "kept":
            report.unchanged += 1
    index.put(rows)


def check_embedder(index: Index, name: str) -> None:
    if name != index.embedder:
        raise IndexStoreError(
            f"this index was built with the embedder {index.embedder}, not {name}: "
            "use the same one, or build a new index in another folder"
        )


def finish_update(index: Index, plan: Plan, report: IndexReport, start: float) -> IndexReport:
    report.errors = index.count_errors(plan.scope)
    index.finish()
    report.indexed = index.count()
    report.elapsed_s = time.perf_counter() - start
    return report


def update_index(
    index: Index,
    embedder: Embedder,
    paths: Sequence[str],
    *,
    progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    workers: int | None = None,
    chunk: int = CHUNK,
    files: Sequence[str] | None = None,
    read: Callable[[str], bytes] = read_file,
) -> IndexReport:
    """Bring the index in step with ``paths`` (folders searched recursively, or files, inside the
    index's root; ``files``: see ``plan_update``). Raises IndexStoreError for a path outside the
    root or a locked index. ``read``: see ``embed_chunk``."""
    check_embedder(index, embedder.info.name)
    start = time.perf_counter()
    stop = should_stop or (lambda: False)
    notify = progress or (lambda _event: None)
    with index.writing():
        plan = plan_update(index, paths, files)
        report = IndexReport(unchanged=plan.unchanged, skipped=plan.skipped)
        index.delete(plan.gone)
        report.removed = len(plan.gone)
        clock = ProgressClock(len(plan.candidates))
        notify(Progress(0, clock.total, 0.0, 0.0, None))

        def advance(count: int) -> None:
            elapsed, rate, eta = clock.advance(count)
            notify(Progress(clock.done, clock.total, elapsed, rate, eta))

        for first in range(0, len(plan.candidates), chunk):
            outcomes = embed_chunk(embedder, plan.candidates[first:first + chunk], workers or available_cpus(), stop,
                                   advance, read)
            write_outcomes(index, outcomes, report)  # one commit per chunk: a stop or a crash keeps it
            if stop():
                break
        report.pending = len(plan.candidates) - clock.done
        report.cancelled = report.pending > 0
        return finish_update(index, plan, report, start)
