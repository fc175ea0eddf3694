"""The driver of a Ray run: connects to Ray, builds the input dataset, runs one ``Replica`` per
worker (Ray Data actor pool), writes each chunk that comes back as a shard, and builds the ranking
from the shards.

Signals. ``ray.init`` replaces the process's SIGTERM handling twice: a Python handler (``sys.exit``;
for a local Ray, one that kills Ray's processes and exits 1) and, in its C++ core, a crash handler
that prints a native stack dump and aborts. The driver puts the caller's SIGINT and SIGTERM handlers
back right after ``ray.init`` (``signal.signal`` installs Python's own C handler again), and while
chunks come back it handles both itself: the run stops, every finished chunk is kept, and the caller
learns which signal (``ScaleOutRun.signal``). Ray is still shut down: by the driver on the way out,
and by the exit hook ``ray.init`` registers should the caller exit at once.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..checks import InputError
from ..execution import ProgressClock
from ..loading import ModelLoadError
from ..results import ImageResult, Progress, Ranking
from ..settings import RunSettings
from .replica import Replica, is_uri
from .shards import RESULT_COLUMNS, ShardStore, first_line

INSTALL_HINT = "pip install -r requirements-ray.txt"
# Images per replica call: the unit of progress, of shards, and of work lost when a replica dies.
MAX_CHUNK = 256
CHUNKS_PER_WORKER = 4  # small runs still spread over every worker
# Environment a local Ray's workers need to build and find the same model as this process.
FORWARDED_ENV = ("LYCHEE_CACHE", "LYCHEE_FEATURE_CACHE_GB", "HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "PYTORCH_CUDA_ALLOC_CONF")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Stripped from manifest entries: what editors, spreadsheets and Windows leave around a path.
ENTRY_WHITESPACE = " \t\r\n\v\f"


class RayUnavailable(RuntimeError):
    """Ray is not installed; the message says how to install it."""


class ScaleOutError(RuntimeError):
    """The Ray run failed; the message is one sentence (finished chunks stay in --out for --resume)."""


@dataclass(frozen=True)
class ScaleOutRun:
    ranking: Ranking  # every result in the shards (plus, for a list of images, those not reached)
    workers: int
    gpus_per_worker: int
    already_done: int  # inputs that had a row in --out before this run (--resume)
    finished_now: int  # images scored or failed by this run
    signal: int | None = None  # the signal (SIGINT, SIGTERM) that stopped the run, if one did


def require_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise RayUnavailable(f"Ray is not installed: {INSTALL_HINT}") from None
    return ray


def connect(ray, address: str) -> bool:
    """Join the cluster at ``address`` or, for ``local``, start a new Ray in this process with every
    CPU. Reuses a connection that is already open. Returns whether this call connected."""
    if ray.is_initialized():
        return False
    main_thread = threading.current_thread() is threading.main_thread()
    handlers = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS} if main_thread else {}
    options = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    if address == "local":
        env = {name: os.environ[name] for name in FORWARDED_ENV if name in os.environ}
        options.update(address="local", num_cpus=os.cpu_count(), runtime_env={"env_vars": env})
    else:
        # The cluster brings the dependencies; this package goes along, so every node runs this code.
        options.update(address=address, runtime_env={"py_modules": [str(Path(__file__).resolve().parent.parent)]})
    try:
        with _native_stderr_silenced():
            ray.init(**options)
    except Exception as exc:  # unreachable address, no cluster running, version mismatch...
        raise ScaleOutError(f"cannot start or reach Ray at {address!r}: {first_line(exc)}") from exc
    finally:
        for signum, handler in handlers.items():  # the caller's again (see the module's docstring)
            if handler is not None:
                signal.signal(signum, handler)
    return True


@contextlib.contextmanager
def _native_stderr_silenced():
    """Ray's C++ core writes a start-up line straight to file descriptor 2 (e.g. when
    RAY_BACKEND_LOG_LEVEL is set); failures still come back as Python exceptions."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def configure_ray_data(ray) -> None:
    """Replica errors come back as themselves (the driver reports their one sentence); Ray Data's
    console messages and progress bars would interleave with ours (its logs stay in its log files)."""
    context = ray.data.DataContext.get_current()
    context.raise_original_map_exception = True
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    for handler in logging.getLogger("ray.data").handlers:
        if handler.get_name() == "console":
            handler.setLevel(logging.CRITICAL)


def read_manifest(ray, manifest: str):
    """A dataset with one column, ``name``, in the file's order: the lines of a text file (blank ones
    included), or the ``path`` column (else the first column) of a CSV or Parquet file. Read by Ray
    Data's workers (the file may be where only the cluster sees it)."""
    source = manifest if is_uri(manifest) else os.path.abspath(manifest)
    suffix = Path(manifest).suffix.lower()
    if suffix in (".csv", ".tsv"):
        dataset = ray.data.read_csv(source)
    elif suffix in (".parquet", ".pq"):
        dataset = ray.data.read_parquet(source)
    else:
        return ray.data.read_text(source, drop_empty_lines=False).rename_columns({"text": "name"})
    columns = dataset.columns() or []
    if not columns:
        raise InputError(f"the manifest {manifest} lists nothing (a CSV manifest needs a header row, e.g. 'path')")
    column = "path" if "path" in columns else columns[0]
    return dataset.select_columns([column]).rename_columns({column: "name"})


def manifest_entries(ray, manifest: str, notice: Callable[[str], None]) -> list[str]:
    """The manifest's entries in its order, each stripped of surrounding whitespace (spaces, tabs,
    ``\\r``); blank ones are skipped and counted in one notice. InputError when it lists none or
    cannot be read. The driver holds the names (as it holds the results at the end)."""
    try:
        dataset = read_manifest(ray, manifest)
        dataset.context.execution_options.preserve_order = True  # the first occurrence wins: order matters
        tables = ray.get(dataset.to_arrow_refs())
    except InputError:
        raise
    except Exception as exc:  # unreadable file or format
        raise InputError(f"cannot read the manifest {manifest}: {first_line(_root_cause(exc))}") from None
    values = [value for table in tables for value in table.column("name").to_pylist()]
    entries = [str(value).strip(ENTRY_WHITESPACE) for value in values if value is not None]
    kept = [entry for entry in entries if entry]
    blank = len(values) - len(kept)  # blank lines, empty cells
    blanks = f"{blank} blank {'entry' if blank == 1 else 'entries'}"
    if not kept:
        raise InputError(f"the manifest {manifest} lists no images" + (f" (only {blanks})" if blank else ""))
    if blank:
        notice(f"skipped {blanks} in the manifest {manifest}")
    return kept


def _root_cause(exc: BaseException) -> BaseException:
    """The replica's own exception inside Ray's wrappers (a task error keeps it as ``cause``)."""
    for _ in range(10):
        inner = getattr(exc, "cause", None) or exc.__cause__
        if not isinstance(inner, BaseException):
            break
        exc = inner
    return exc


def rank_on_ray(
    settings: RunSettings,
    images: Sequence[str] = (),
    *,
    manifest: str | None = None,
    address: str = "local",
    workers: int | None = None,
    chunk_size: int | None = None,
    out_dir: str | os.PathLike | None = None,
    resume: bool = False,
    progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    notice: Callable[[str], None] | None = None,
) -> ScaleOutRun:
    """Score ``images`` (paths or URIs) or the entries of ``manifest`` on Ray under ``settings`` (the
    run's one RunSettings, handed whole to every replica): one ``Reranker`` replica per GPU (or
    ``workers`` replicas; on CPU where the cluster has no GPU). Inputs are taken once each, in order
    (the first occurrence wins), whether given or listed.

    Results go to Parquet shards under ``out_dir`` as chunks finish (a temporary folder if none);
    ``resume`` skips the inputs that already have a row there. ``should_stop`` is polled between
    chunks; SIGINT and SIGTERM (in the main thread) stop the run at once. A stopped run keeps every
    finished chunk, and the inputs it did not reach are in the ranking, not scored. ``notice`` is
    told, one sentence each, of what the run skipped or set aside (blank manifest entries,
    unreadable shards; default: logged as warnings).
    Raises RayUnavailable, InputError or OutDirError (bad arguments), ModelLoadError, ScaleOutError.
    """
    if bool(manifest) == bool(images):
        raise InputError("give either images or a manifest")
    if resume and out_dir is None:
        raise InputError("resuming needs the folder of the earlier run's results (--out)")
    if manifest and not is_uri(manifest) and not os.path.isfile(manifest):
        raise InputError(f"no such manifest: {manifest}")
    ray = require_ray()
    notice = notice or logging.getLogger(__name__).warning
    temporary = out_dir is None
    store = ShardStore(tempfile.mkdtemp(prefix="lychee-ray-") if temporary else out_dir, notice)
    try:
        store.open(settings, resume)
        done = store.done_names() if resume else set()  # sets aside the shards that cannot be read
        set_aside_before = len(store.set_aside)
        replica_options = dict(settings=settings, base_dir=os.getcwd())
        started = connect(ray, address)
        try:
            configure_ray_data(ray)
            # Deduplicated like command-line paths: the first occurrence wins, the order is kept.
            names = list(dict.fromkeys(manifest_entries(ray, manifest, notice) if manifest else images))
            todo = [name for name in names if name not in done]
            run = _Run(ray, store, progress, should_stop)
            with _signals_stop(run):
                run.execute(todo, workers, chunk_size, replica_options)
        finally:
            if started:
                ray.shutdown()
        table = store.read()
        lost = store.set_aside[set_aside_before:]  # damaged during this run: their images are pending
        ranking = _ranking(table, names, settings, run, lost)
        return ScaleOutRun(ranking, run.workers, run.gpus_per_worker, already_done=len(done),
                           finished_now=run.finished, signal=run.signal)
    finally:
        if temporary:
            shutil.rmtree(store.root, ignore_errors=True)


@contextlib.contextmanager
def _signals_stop(run: "_Run"):
    """SIGINT and SIGTERM stop the run while chunks come back: the first one is recorded and, while
    the driver waits for Ray, interrupts the wait (never a shard being written); later ones change
    nothing. The caller's handlers are back afterwards (a signal then is the caller's to handle)."""
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return

    def stop(signum, _frame):
        if run.signal is None:
            run.signal = signum
            if run.waiting:
                raise KeyboardInterrupt  # what a waiting Ray call expects; the run loop catches it

    previous = {signum: signal.signal(signum, stop) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


class _Run:
    """One pass over the inputs: replicas score chunks, each chunk that comes back becomes a shard."""

    def __init__(self, ray, store: ShardStore, progress, should_stop):
        self.ray, self.store = ray, store
        self.notify = progress or (lambda _event: None)
        self.stop = should_stop or (lambda: False)
        self.elapsed_s = 0.0
        self.cancelled = False
        self.signal: int | None = None  # the signal that stopped the run
        self.waiting = False  # for Ray (a signal may interrupt), not writing a shard
        self.finished = 0  # images scored or failed in this run
        self.stopped: dict[str, int] = {}  # why a replica's run stopped early -> images it left
        self.workers = self.gpus_per_worker = 0

    def execute(self, todo: list[str], workers, chunk_size, replica_options) -> None:
        start = time.perf_counter()
        gpus = int(self.ray.cluster_resources().get("GPU", 0))
        self.workers = workers or max(1, gpus)
        self.gpus_per_worker = 1 if gpus else 0
        chunk = chunk_size or max(1, min(MAX_CHUNK, math.ceil(len(todo) / (CHUNKS_PER_WORKER * self.workers))))
        clock = ProgressClock(len(todo))
        self.notify(Progress(0, len(todo), 0.0, 0.0, None))
        try:
            if todo:
                inputs = self.ray.data.from_items([{"name": name} for name in todo])
                self._consume(inputs, chunk, replica_options, clock)
        finally:
            self.elapsed_s = time.perf_counter() - start

    def _consume(self, inputs, chunk, replica_options, clock) -> None:
        import pyarrow.compute as pc

        scored = inputs.map_batches(
            Replica,
            fn_constructor_kwargs=replica_options,
            # One model per actor. Ray Data restarts a dead actor and retries its chunk: actor pools
            # default to unlimited max_restarts and max_task_retries.
            compute=self.ray.data.ActorPoolStrategy(size=self.workers),
            num_gpus=self.gpus_per_worker,
            num_cpus=1,  # Ray also sets OMP_NUM_THREADS=1: CPU replicas do not fight over cores
            batch_size=chunk,
            batch_format="pyarrow",
        )
        batches = iter(scored.iter_batches(batch_size=None, batch_format="pyarrow"))
        try:
            while self.signal is None:
                self.waiting = True
                try:
                    block = next(batches, None)
                finally:
                    self.waiting = False
                if block is None:
                    break
                reached = pc.is_null(block.column("stopped"))
                self.store.write(block.filter(reached))
                for message in block.filter(pc.invert(reached)).column("stopped").to_pylist():
                    self.stopped[message] = self.stopped.get(message, 0) + 1
                self.finished += pc.sum(reached).as_py() or 0
                elapsed, rate, eta = clock.advance(block.num_rows)
                self.notify(Progress(clock.done, clock.total, elapsed, rate, eta, batch_size=block.num_rows))
                if self.stop():
                    self.cancelled = True
                    break
            else:
                self.cancelled = True  # a signal came while the driver was not waiting for Ray
        except KeyboardInterrupt:  # raised by the signal handler while the driver waits for Ray
            self.cancelled = True
        except Exception as exc:  # Ray wraps the replica's error: report the user-level one
            cause = _root_cause(exc)
            if isinstance(cause, (ModelLoadError, InputError)):  # Ray Data appends lines of its own
                raise type(cause)(first_line(cause)) from None
            raise ScaleOutError(f"the Ray run stopped: {first_line(cause)}") from exc
        finally:
            batches.close()  # stops the pipeline now: chunks in flight are dropped, not written


def _ranking(table, names: list[str], settings: RunSettings, run: _Run, lost: list[Path]) -> Ranking:
    """Every row in the shards, as results in input order: the run's inputs first (those without a
    row are pending), then rows of other inputs (an earlier run's) by name."""
    rows = table.to_pylist()
    have = {row["name"] for row in rows}
    position = {name: i for i, name in enumerate(names + sorted(have.difference(names)))}
    results = [
        ImageResult(position[row["name"]], row["name"], **{column: row[column] for column in RESULT_COLUMNS})
        for row in rows
    ]
    results += [ImageResult(position[name], name) for name in names if name not in have]
    results.sort(key=lambda r: r.index)
    errors = [f"{message} ({count} images not scored)" for message, count in run.stopped.items()]
    if lost:
        errors.append(f"{len(lost)} shard(s) could not be read back and were set aside: "
                      + ", ".join(str(path) for path in lost))
    return Ranking(
        query=settings.query,
        instruction=settings.instruction,
        results=tuple(results),
        mode="+".join(sorted({row["mode"] for row in rows if row["mode"]})) or settings.mode,
        elapsed_s=run.elapsed_s,
        cancelled=run.cancelled,
        model=settings.model.name,
        is_demo=any(row["demo_model"] for row in rows),
        error="; ".join(errors) or None,
        settings=settings,
        quantization="+".join(sorted({row["quantization"] for row in rows if row["quantization"]})) or None,
    )
