"""One model replica per Ray actor: scores a chunk of inputs with the engine's own ``Reranker.rank``.

The engine decides everything about scoring (batching, out-of-memory back-off, per-file errors); a
replica only turns a chunk of input names into image sources and the results into shard rows.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa

from .shards import REPLICA_SCHEMA, RESULT_COLUMNS, first_line

# Threads per replica fetching URI inputs (object stores answer slowly, one file at a time).
FETCH_THREADS = 16


def is_uri(name: str) -> bool:
    return "://" in name


def fetch(uri: str) -> bytes:
    """The bytes behind a URI that pyarrow's file systems know (file://, s3://, gs://, hdfs://, abfs://)."""
    import pyarrow.fs

    filesystem, path = pyarrow.fs.FileSystem.from_uri(uri)
    with filesystem.open_input_stream(path) as stream:
        return stream.read()


class Replica:
    """Ray Data calls the class once per actor (loading the model) and the instance once per chunk."""

    def __init__(self, *, settings, base_dir):
        from ..loading import ModelLoadError
        from ..reranker import Reranker

        # Raised from the first call instead: Ray keeps a task's exception (the driver reports its
        # one sentence), but only the text of an actor constructor's.
        self.load_error = None
        try:
            self.reranker = Reranker.load(settings.model)  # the run's model settings, whole
        except ModelLoadError as exc:
            self.load_error = exc
        self.settings = settings  # the driver's RunSettings, whole: no option picked by hand
        self.base_dir = base_dir  # relative paths are the driver's: on a cluster, a shared file system

    def _source(self, name: str):
        """A path for the engine to open, or the bytes of a URI; an error message if it cannot be read."""
        if not is_uri(name):
            return os.path.join(self.base_dir, name), None
        try:
            return fetch(name), None
        except (OSError, ValueError, pa.ArrowException) as exc:
            return None, f"cannot read {name}: {first_line(exc)}"

    def __call__(self, chunk: pa.Table) -> pa.Table:
        if self.load_error is not None:
            raise self.load_error
        names = chunk.column("name").to_pylist()
        if any(is_uri(n) for n in names):
            with ThreadPoolExecutor(FETCH_THREADS) as pool:
                fetched = list(pool.map(self._source, names))
        else:
            fetched = [self._source(n) for n in names]
        readable = [i for i, (_source, error) in enumerate(fetched) if error is None]
        ranking = self.reranker.run(
            self.settings, [fetched[i][0] for i in readable], names=[names[i] for i in readable]
        )
        info = self.reranker.info
        common = {"mode": ranking.mode, "demo_model": info.is_demo, "quantization": info.quantization}
        rows = [{"name": n, "error": error, **common} for n, (_s, error) in zip(names, fetched)]
        for position, result in zip(readable, ranking.results):
            rows[position].update({column: getattr(result, column) for column in RESULT_COLUMNS})
            if result.status == "pending":  # the replica's run stopped before this image
                rows[position]["stopped"] = ranking.error or "the replica stopped"
        return pa.Table.from_pylist(rows, schema=REPLICA_SCHEMA)
