"""The collection index on disk: one LanceDB table (Arrow/Lance columnar files in a folder, no server)
with a row per image file, and ``index.json`` saying which embedder made the vectors and which
folder the paths are relative to.

A row: ``path`` (relative to the root, "/"-separated; the key), ``path_bytes`` (the exact bytes of a
name that is not UTF-8, as in the exports), ``sha256`` of the content, ``size`` and ``mtime_ns`` (the
cheap change test), ``vector`` (the embedder's unit vector; null for a file that could not be
embedded) and ``error`` (one sentence, or null).

Search is a dot product over the vectors (``metric="dot"``; LanceDB's distance is 1 - dot, so the
similarity is the cosine of unit vectors): exact (a scan) below ``ANN_THRESHOLD`` vectors, beyond
it through an IVF_FLAT index (√n k-means partitions of the full-precision vectors; a query scans the
nearest fifth of them exactly); rows added after the index was built are searched
exactly too (LanceDB merges them in). Measured: docs/benchmarks.md#the-collection-index.

One writer at a time (an exclusive lock on ``DIR/.lock``); readers never wait.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from ..export import OutputError, name_bytes, readable, write_atomically

TABLE = "images"
META_FILE = "index.json"
LOCK_FILE = ".lock"
FORMAT_VERSION = 1
# Below this many vectors a query scans them all (exact, and fast enough: docs/benchmarks.md);
# from here on an IVF_FLAT index is (re)built after each update.
ANN_THRESHOLD = 50_000
# A query scans this share of the partitions (√n of them), at least ANN_MIN_NPROBES: on random
# 768-d vectors (no clusters: the worst case) recall@100 vs exact was 1.000 at 100k and 0.913 at 1M,
# in 28 ms and 180 ms (docs/benchmarks.md#the-collection-index).
ANN_PROBE_SHARE = 0.2
ANN_MIN_NPROBES = 50
SQL_IN_CHUNK = 500  # paths per "path IN (...)" clause


class IndexStoreError(ValueError):
    """The index cannot be used as asked; the message is one sentence."""


@dataclass(frozen=True)
class Hit:
    """One search result: where the file is, and how similar it is to the query."""

    path: str  # relative to the index's root: the row's key
    file: str  # the path to open
    similarity: float  # cosine similarity, in [-1, 1]
    retrieval_rank: int  # 1 = most similar


def schema(dim: int):
    import pyarrow as pa

    return pa.schema(
        [
            ("path", pa.string()),
            ("path_bytes", pa.binary()),
            ("sha256", pa.string()),
            ("size", pa.int64()),
            ("mtime_ns", pa.int64()),
            ("vector", pa.list_(pa.float32(), dim)),
            ("error", pa.string()),
        ]
    )


def key_of(relative: str) -> str:
    """The row key of a path relative to the root: "/"-separated, readable (a name that is not
    UTF-8 keeps its bytes in ``path_bytes``)."""
    return readable(relative.replace(os.sep, "/"))


def sql_text(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def under_clause(prefixes: Sequence[str]) -> str | None:
    """A filter keeping the rows under these keys (a folder's key ends in "/"; "" is everything)."""
    if not prefixes or "" in prefixes:
        return None
    return " OR ".join(
        f"starts_with(path, {sql_text(p)})" if p.endswith("/") else f"path = {sql_text(p)}" for p in prefixes
    )


class Index:
    """An index folder, opened for reading (``open``) or created (``create``)."""

    def __init__(self, directory: Path, meta: dict):
        import lancedb

        self.directory = directory
        self.meta = meta
        self._db = lancedb.connect(str(directory))
        self._table = None

    # -- opening ---------------------------------------------------------------------------------
    @classmethod
    def open(cls, directory: str | os.PathLike) -> "Index":
        """An existing index; IndexStoreError when there is none there."""
        directory = Path(directory)
        try:
            meta = json.loads((directory / META_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise IndexStoreError(f"there is no index in {directory} (build one with the index command)") from None
        except (OSError, ValueError) as exc:
            raise IndexStoreError(f"the index in {directory} cannot be read ({exc})") from None
        if meta.get("format") != FORMAT_VERSION:
            raise IndexStoreError(f"the index in {directory} was made by another version: rebuild it in a new folder")
        return cls(directory, meta)

    @classmethod
    def create(cls, directory: str | os.PathLike, *, embedder: str, dim: int, root: str) -> "Index":
        """A new, empty index (the folder is created if need be; one holding anything else is refused)."""
        directory = Path(directory)
        if directory.exists() and not directory.is_dir():
            raise IndexStoreError(f"{directory} is a file, not a folder")
        if directory.is_dir() and any(directory.iterdir()):
            raise IndexStoreError(f"{directory} is not empty and holds no index: choose an empty or new folder")
        meta = {"format": FORMAT_VERSION, "embedder": embedder, "dim": dim, "root": root}
        try:
            directory.mkdir(parents=True, exist_ok=True)
            index = cls(directory, meta)
            index._db.create_table(TABLE, schema=schema(dim))
            index.save_meta()
        except OSError as exc:
            raise IndexStoreError(f"cannot create an index in {directory} ({exc.strerror or exc})") from None
        return index

    @staticmethod
    def exists(directory: str | os.PathLike) -> bool:
        return (Path(directory) / META_FILE).is_file()

    def save_meta(self) -> None:
        try:
            write_atomically(self.directory / META_FILE, json.dumps(self.meta, ensure_ascii=False, indent=2))
        except OutputError as exc:
            raise IndexStoreError(str(exc)) from None

    @property
    def embedder(self) -> str:
        return self.meta["embedder"]

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @property
    def root(self) -> Path:
        return Path(self.meta["root"])

    @property
    def table(self):
        if self._table is None:
            self._table = self._db.open_table(TABLE)
        return self._table

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the index's write lock; IndexStoreError at once when another writer holds it."""
        with open(self.directory / LOCK_FILE, "a+") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise IndexStoreError(f"the index in {self.directory} is being updated by another process") from None
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    # -- reading ---------------------------------------------------------------------------------
    def count(self, under: Sequence[str] = ()) -> int:
        """Rows with a vector (under these keys)."""
        return self.table.count_rows(_with_vector(under))

    def count_errors(self, under: Sequence[str] = ()) -> int:
        where = "error IS NOT NULL"
        if clause := under_clause(under):
            where += f" AND ({clause})"
        return self.table.count_rows(where)

    def rows(self, under: Sequence[str] = (), columns: Sequence[str] = ("path", "sha256", "size", "mtime_ns", "error")):
        """The rows under these keys, without their vectors (an Arrow table)."""
        query = self.table.search().select(list(columns))
        if clause := under_clause(under):
            query = query.where(clause)
        return query.limit(None).to_arrow()

    def vectors_by_hash(self, hashes: Iterable[str]) -> dict[str, np.ndarray]:
        """The vector of a row with each content hash."""
        hashes = sorted(set(hashes))
        found: dict[str, np.ndarray] = {}
        for start in range(0, len(hashes), SQL_IN_CHUNK):
            chunk = ", ".join(sql_text(h) for h in hashes[start:start + SQL_IN_CHUNK])
            table = (self.table.search().where(f"vector IS NOT NULL AND sha256 IN ({chunk})")
                     .select(["sha256", "vector"]).limit(None).to_arrow())
            for digest, vector in zip(table.column("sha256").to_pylist(), table.column("vector").to_numpy(zero_copy_only=False)):
                found.setdefault(digest, np.asarray(vector, dtype=np.float32))
        return found

    def file_of(self, key: str, raw: bytes | None) -> str:
        """The path to open for a row."""
        return os.path.join(self.root, os.fsdecode(raw) if raw is not None else key)

    def search(self, vector: np.ndarray, k: int, under: Sequence[str] = (), nprobes: int | None = None) -> list[Hit]:
        """The ``k`` rows most similar to ``vector`` (under these keys), most similar first;
        ``nprobes``: partitions scanned once there is an ANN index (default: as chosen when built)."""
        query = self.table.search(np.asarray(vector, dtype=np.float32)).metric("dot").limit(k)
        query = query.select(["path", "path_bytes", "_distance"])
        if self.meta.get("ann"):
            query = query.nprobes(nprobes or self.meta["nprobes"])
        table = query.where(_with_vector(under), prefilter=True).to_arrow()
        return [
            Hit(key, self.file_of(key, raw), 1.0 - distance, rank)
            for rank, (key, raw, distance) in enumerate(
                zip(*(table.column(c).to_pylist() for c in ("path", "path_bytes", "_distance"))), 1
            )
        ]

    # -- writing (inside ``writing()``) ----------------------------------------------------------
    def delete(self, keys: Sequence[str]) -> None:
        keys = list(keys)
        for start in range(0, len(keys), SQL_IN_CHUNK):
            self.table.delete("path IN (" + ", ".join(sql_text(k) for k in keys[start:start + SQL_IN_CHUNK]) + ")")

    def put(self, rows: list[dict]) -> None:
        """Replace the rows with these keys by these rows: one commit (what is done survives a stop)."""
        import pyarrow as pa

        if not rows:
            return
        self.table.merge_insert("path").when_matched_update_all().when_not_matched_insert_all().execute(
            pa.Table.from_pylist(rows, schema=schema(self.dim)), on_bad_vectors="null"  # error rows: no vector
        )

    def build_ann(self) -> None:
        """(Re)build the IVF_FLAT index over the vectors; searches use it from then on."""
        from lancedb.index import IvfFlat

        partitions = max(1, round(math.sqrt(self.count())))  # LanceDB's own default, made explicit
        self.table.create_index("vector", config=IvfFlat(distance_type="dot", num_partitions=partitions), replace=True)
        self.meta.update(ann="IVF_FLAT", nprobes=max(ANN_MIN_NPROBES, math.ceil(partitions * ANN_PROBE_SHARE)))
        self.save_meta()

    def finish(self) -> None:
        """After an update: compact the small commits into few files, drop old versions, and build
        (or refresh) the ANN index once the collection is large enough for a scan to be slow."""
        from datetime import timedelta

        if self.count() >= ANN_THRESHOLD:
            self.build_ann()
        # Versions older than an hour go: a reader (the app) may still be on a recent one.
        self.table.optimize(cleanup_older_than=timedelta(hours=1))


def _with_vector(under: Sequence[str]) -> str:
    """A filter keeping the rows that have a vector (under these keys). Written on ``error``: a row
    has a vector exactly when it has no error, and testing the vector column would read every
    vector (3 GB for a million 768-d rows) for each query."""
    clause = under_clause(under)
    return "error IS NULL" + (f" AND ({clause})" if clause else "")


def row(key: str, relative: str, sha256: str | None, size: int, mtime_ns: int, vector=None, error: str | None = None) -> dict:
    return {
        "path": key,
        "path_bytes": name_bytes(relative),
        "sha256": sha256,
        "size": size,
        "mtime_ns": mtime_ns,
        "vector": None if vector is None else np.asarray(vector, dtype=np.float32),
        "error": error,
    }
