"""Indexing a library on Ray (``index --ray ADDRESS``): the same scale-out layer as ranking.

The driver plans the update as in one process (``retrieval.indexing.plan_update``: the folder scan
and the cheap size/time test, no file opened) and removes the rows of deleted files; the files to
read go to a Ray Data actor pool of ``EmbedReplica`` (one embedder per GPU), each of which runs the
one-process chunk step (``embed_chunk``: read, hash, prepare on its worker threads, embed in
batches); each chunk that comes back is written to the index by the driver in one commit
(``write_outcomes``). A stop keeps every chunk written; the next update reads only what is missing.
Paths must be readable by every node (one machine, or a shared file system).
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable, Sequence

from ..execution import ProgressClock
from ..results import Progress
from ..retrieval.indexing import (
    Candidate,
    IndexReport,
    Outcome,
    check_embedder,
    embed_chunk,
    finish_update,
    plan_update,
    write_outcomes,
)
from ..retrieval.store import Index
from ..loading import ModelLoadError
from .driver import ScaleOutError, _root_cause, configure_ray_data, connect, require_ray
from .shards import first_line

CANDIDATE_FIELDS = tuple(f.name for f in dataclasses.fields(Candidate))
CHUNK = 256  # files per replica call: the unit of progress, of commits, and of work a dead replica loses


class EmbedReplica:
    """Ray Data calls the class once per actor (loading the embedder) and the instance per chunk."""

    def __init__(self, *, embedder: str):
        from ..loading import ModelLoadError
        from ..retrieval.embedder import Embedder

        self.load_error = None  # raised from the first call: Ray keeps a task's exception whole
        try:
            self.embedder = Embedder.load(embedder)
        except ModelLoadError as exc:
            self.load_error = exc

    def __call__(self, chunk):
        import pyarrow as pa

        from ..pipeline import available_cpus

        if self.load_error is not None:
            raise self.load_error
        candidates = [Candidate(**{f: row[f] for f in CANDIDATE_FIELDS}) for row in chunk.to_pylist()]
        outcomes = embed_chunk(self.embedder, candidates, available_cpus())
        return pa.Table.from_pylist([
            {**dataclasses.asdict(o.candidate), "kind": o.kind, "sha256": o.sha256, "error": o.error,
             "vector": None if o.vector is None else o.vector.tolist()}
            for o in outcomes
        ])


def update_index_on_ray(
    index: Index,
    embedder: str,
    paths: Sequence[str],
    *,
    address: str = "local",
    workers: int | None = None,
    chunk_size: int | None = None,
    progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> IndexReport:
    """``update_index`` with the embedding on Ray: one replica per GPU (or ``workers``; on CPU where
    the cluster has none). Raises RayUnavailable, ScaleOutError, IndexStoreError, ModelLoadError."""
    check_embedder(index, embedder)
    ray = require_ray()
    start = time.perf_counter()
    notify = progress or (lambda _event: None)
    stop = should_stop or (lambda: False)
    with index.writing():
        plan = plan_update(index, [os.path.abspath(p) for p in paths])  # absolute: replicas run elsewhere
        report = IndexReport(unchanged=plan.unchanged, skipped=plan.skipped)
        index.delete(plan.gone)
        report.removed = len(plan.gone)
        clock = ProgressClock(len(plan.candidates))
        notify(Progress(0, clock.total, 0.0, 0.0, None))
        if plan.candidates:
            started = connect(ray, address)
            try:
                configure_ray_data(ray)
                gpus = int(ray.cluster_resources().get("GPU", 0))
                embedded = ray.data.from_items([dataclasses.asdict(c) for c in plan.candidates]).map_batches(
                    EmbedReplica,
                    fn_constructor_kwargs={"embedder": embedder},
                    compute=ray.data.ActorPoolStrategy(size=workers or max(1, gpus)),
                    num_gpus=1 if gpus else 0,
                    num_cpus=1,
                    batch_size=chunk_size or CHUNK,
                    batch_format="pyarrow",
                )
                batches = iter(embedded.iter_batches(batch_size=None, batch_format="pyarrow"))
                try:
                    for block in batches:
                        outcomes = [
                            Outcome(Candidate(**{f: r[f] for f in CANDIDATE_FIELDS}), r["kind"], r["sha256"],
                                    r["vector"], r["error"])
                            for r in block.to_pylist()
                        ]
                        write_outcomes(index, outcomes, report)  # one commit per chunk
                        elapsed, rate, eta = clock.advance(len(outcomes))
                        notify(Progress(clock.done, clock.total, elapsed, rate, eta))
                        if stop():
                            break
                except KeyboardInterrupt:
                    pass  # what was written stays; the next update reads the rest
                except Exception as exc:  # Ray wraps the replica's error: report the user-level one
                    cause = _root_cause(exc)
                    if isinstance(cause, ModelLoadError):
                        raise ModelLoadError(first_line(cause)) from None
                    raise ScaleOutError(f"the Ray run stopped: {first_line(cause)}") from exc
                finally:
                    batches.close()
            finally:
                if started:
                    ray.shutdown()
        report.pending = len(plan.candidates) - clock.done
        report.cancelled = report.pending > 0
        return finish_update(index, plan, report, start)
