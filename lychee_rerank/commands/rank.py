"""``python -m lychee_rerank rank ...`` in this process (``--ray`` hands the same settings to Ray:
``lychee_rerank.scale_out.command``).

The rule: a run ends with every input accounted for — scored, errored or pending — whatever happens.
A file that cannot be scored is a row with its error; Ctrl-C or SIGTERM stops the run between
forwards; an unexpected error stops it too. In every case the table is printed and every requested
output is written with one row per image. Everything that can be checked before the model loads
(paths, outputs, settings, the query image) is.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

from .common import (
    UsageError, check_outputs, find_inputs, load_reranker, print_ranking, say, settings_from_args, write_outputs,
)
from .signals import Interrupted, StopSignals


def run_rank(args: argparse.Namespace) -> int:
    from ..scale_out import asked_for, run_rank_command  # scale-out on Ray: lychee_rerank/scale_out/

    if asked_for(args):
        if args.index:
            raise UsageError("--index (search then rerank) runs in this process: leave out the Ray options")
        return run_rank_command(args)
    return under_stop_signals(_rank, args)


def under_stop_signals(command, args: argparse.Namespace) -> int:
    """``command(args, signals)`` with SIGINT and SIGTERM handled (StopSignals); a signal it could
    not wait for is one line and exit code 128 + the signal number."""
    with StopSignals() as signals:
        try:
            return command(args, signals)
        except Interrupted as exc:
            say(f"interrupted by {signal.Signals(exc.signum).name} while {signals.phase}")
            return 128 + exc.signum


def _search(retrieval, settings):
    """The first stage: load the index's embedder and search (None when the embedder cannot load)."""
    from ..loading import ModelLoadError
    from ..retrieval import Embedder, Index, search

    try:
        embedder = Embedder.load(retrieval.embedder)
    except ModelLoadError as exc:
        say(str(exc))
        return None
    say(f"loaded {embedder.info.summary()}")
    return search(Index.open(retrieval.index), embedder, settings, retrieval)


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def _rank(args: argparse.Namespace, signals: StopSignals) -> int:
    from tqdm import tqdm

    from .. import ImageResult, InputError, Ranking
    from ..retrieval.search import display_name, with_retrieval
    from .retrieval import retrieval_from_args

    retrieval = retrieval_from_args(args)  # rank --index DIR: search, then rerank the top K
    if not args.paths and retrieval is None:
        raise UsageError("give image files or folders to rank (or --manifest FILE with --ray, or --index DIR)")
    check_outputs(args)
    settings = settings_from_args(args)
    images = find_inputs(args.paths) if retrieval is None else []

    signals.phase = "loading the model"
    reranker = load_reranker(settings.model)
    if reranker is None:
        return 1
    names = None
    if retrieval is not None:
        found = _search(retrieval, settings)
        if found is None:
            return 1
        hits, searched = found
        images, names = [h.file for h in hits], [display_name(h.file) for h in hits]

    bar = tqdm(total=len(images), unit="img", file=sys.stderr, dynamic_ncols=True)
    finished: dict[int, ImageResult] = {}

    def on_progress(event) -> None:
        if event.waiting:
            bar.set_description("waiting")
            return
        finished.update((r.index, r) for r in event.new_results)
        bar.update(len(event.new_results))

    start = time.perf_counter()

    def what_finished(cancelled: bool, error: str | None = None) -> Ranking:
        """The run as far as the progress events tell, should run() raise instead of returning."""
        return Ranking(
            query=settings.query, instruction=settings.instruction,
            results=tuple(finished.get(i, ImageResult(i, name)) for i, name in enumerate(names or images)),
            mode=settings.mode, elapsed_s=time.perf_counter() - start, cancelled=cancelled,
            model=reranker.info.name, is_demo=reranker.info.is_demo, error=error, settings=settings,
            quantization=reranker.info.quantization,
        )

    signals.phase, signals.ranking = "ranking", True
    try:
        ranking = reranker.run(settings, images, names=names, progress=on_progress, should_stop=signals.stop)
    except InputError as exc:
        raise UsageError(str(exc)) from None
    except Interrupted:  # a second signal: stop now
        ranking = what_finished(cancelled=True)
    except Exception as exc:  # whatever stopped the run, what finished is written
        ranking = what_finished(cancelled=False, error=_one_line(exc))
    finally:
        signals.phase, signals.ranking = "writing the outputs", False
        bar.close()

    if retrieval is not None:
        ranking = with_retrieval(ranking, hits, searched)
    print_ranking(ranking, args.top)
    written = write_outputs(args, ranking)
    if ranking.error:
        say(f"the run stopped on an unexpected error: {ranking.error}")
        return 1
    if not written:
        return 1
    return signals.exit_code if ranking.cancelled else 0
