"""``python -m lychee_rerank index --index DIR [--embedder ID|PATH|demo] [--json FILE] PATH...``: build
or update the collection index of those folders (docs/index.md).

Ends with one summary line (added, changed, removed, unchanged, errors) and, with ``--json``, a file
holding those counts, ``embedded`` and ``elapsed_s``. Ctrl-C or SIGTERM stops between batches and
keeps every committed chunk (run again to finish); exit codes as for ``rank``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .common import UsageError, check_outputs, positive_int, report_skipped, say


def add_index_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH", help="folders (searched recursively) or image files to index")
    parser.add_argument("--index", required=True, metavar="DIR", help="the index folder (created if new)")
    parser.add_argument("--embedder", help="hub id, local directory, or 'demo' (default: the index's own; for a new "
                                           "index $LYCHEE_EMBEDDER or google/siglip2-base-patch16-naflex)")
    parser.add_argument("--root", metavar="DIR", help="the folder paths are stored relative to (default: for a new "
                                                      "index, the PATHs' common folder; give it to move a library)")
    parser.add_argument("--json", metavar="PATH", help="write the counts and timings as JSON")
    group = parser.add_argument_group("scale out on Ray (docs/scale-out.md; needs requirements-ray.txt)")
    group.add_argument("--ray", metavar="ADDRESS", help="embed on Ray: 'local', 'auto' or ray://HOST:10001")
    group.add_argument("--workers", type=positive_int, metavar="N", help="embedder replicas (default: one per GPU; 1 on CPU)")


def run_index(args: argparse.Namespace) -> int:
    from .rank import under_stop_signals

    return under_stop_signals(_index, args)


def _open_index(args: argparse.Namespace):
    """The index (opened or created, its root moved when --root says so) and the embedder to load."""
    from ..retrieval import Index, IndexStoreError, default_embedder

    try:
        if Index.exists(args.index):
            index = Index.open(args.index)
            if args.embedder and args.embedder != index.embedder:
                raise UsageError(f"the index in {args.index} was built with the embedder {index.embedder}, not "
                                 f"{args.embedder}: build a new index in another folder to change it")
            if args.root and os.path.abspath(args.root) != str(index.root):
                index.meta["root"] = os.path.abspath(args.root)  # the library moved: keys stay relative
                index.save_meta()
            return index, index.embedder
        folders = [os.path.abspath(p if os.path.isdir(p) else os.path.dirname(p) or ".") for p in args.paths]
        root = os.path.abspath(args.root) if args.root else os.path.commonpath(folders)
        return None, (args.embedder or default_embedder(), root)
    except IndexStoreError as exc:
        raise UsageError(str(exc)) from None


def _index(args: argparse.Namespace, signals) -> int:
    from tqdm import tqdm

    from ..loading import ModelLoadError
    from ..retrieval import Embedder, Index, IndexStoreError, update_index
    from ..retrieval.embedder import embedder_width
    from .common import quiet_libraries

    for path in args.paths:
        if not os.path.lexists(path):
            raise UsageError(f"no such file or folder: {path}")
    check_outputs(args)
    index, wanted = _open_index(args)
    if args.workers and not args.ray:
        raise UsageError("--workers needs --ray ADDRESS (local, auto or ray://HOST:10001)")
    signals.phase = "loading the embedder"
    quiet_libraries()
    name = wanted if index is not None else wanted[0]
    try:
        embedder = None if args.ray else Embedder.load(name)  # on Ray, each replica loads its own
        dim = embedder.info.dim if embedder else embedder_width(name)
    except ModelLoadError as exc:
        say(str(exc))
        return 1
    if embedder is not None:
        say(f"loaded {embedder.info.summary()}")
    bar = tqdm(unit="img", file=sys.stderr, dynamic_ncols=True, desc="indexing")

    def on_progress(event) -> None:
        bar.total = event.total
        bar.update(event.done - bar.n)

    try:
        if index is None:
            index = Index.create(args.index, embedder=name, dim=dim, root=wanted[1])
        signals.phase, signals.ranking = "indexing", True
        try:
            if args.ray:
                report = _on_ray(args, index, name, on_progress, signals.stop.is_set)
                if report is None:
                    return 1
            else:
                report = update_index(index, embedder, args.paths, progress=on_progress, should_stop=signals.stop.is_set)
        finally:
            signals.phase, signals.ranking = "writing the outputs", False
            bar.close()
    except IndexStoreError as exc:
        raise UsageError(str(exc)) from None
    report_skipped(report.skipped)
    say(report.summary())
    if args.json and not _write_json(args.json, report, index):
        return 1
    return signals.exit_code if report.cancelled else 0


def _on_ray(args, index, embedder: str, progress, should_stop):
    """The update with the embedding on Ray; None (after one line) when Ray or a replica fails."""
    from ..loading import ModelLoadError
    from ..scale_out import RayUnavailable, ScaleOutError
    from ..scale_out.indexing import update_index_on_ray

    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    try:
        return update_index_on_ray(index, embedder, args.paths, address=args.ray, workers=args.workers,
                                   progress=progress, should_stop=should_stop)
    except (RayUnavailable, ScaleOutError, ModelLoadError) as exc:
        say(str(exc))
        return None


def _write_json(path: str, report, index) -> bool:
    from ..export import OutputError, write_atomically

    data = {**report.record(), "index": os.path.abspath(index.directory), "root": str(index.root),
            "embedder": index.embedder, "dim": index.dim}
    try:
        write_atomically(path, json.dumps(data, ensure_ascii=False, indent=2))
    except OutputError as exc:
        say(str(exc))
        return False
    return True
