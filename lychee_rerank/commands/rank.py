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
        return run_rank_command(args)
    with StopSignals() as signals:
        try:
            return _rank(args, signals)
        except Interrupted as exc:
            say(f"interrupted by {signal.Signals(exc.signum).name} while {signals.phase}")
            return 128 + exc.signum


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def _rank(args: argparse.Namespace, signals: StopSignals) -> int:
    from tqdm import tqdm

    from .. import ImageResult, InputError, Ranking

    if not args.paths:
        raise UsageError("give image files or folders to rank (or --manifest FILE with --ray)")
    check_outputs(args)
    settings = settings_from_args(args)
    images = find_inputs(args.paths)

    signals.phase = "loading the model"
    reranker = load_reranker(settings.model)
    if reranker is None:
        return 1

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
            results=tuple(finished.get(i, ImageResult(i, name)) for i, name in enumerate(images)),
            mode=settings.mode, elapsed_s=time.perf_counter() - start, cancelled=cancelled,
            model=reranker.info.name, is_demo=reranker.info.is_demo, error=error, settings=settings,
            quantization=reranker.info.quantization,
        )

    signals.phase, signals.ranking = "ranking", True
    try:
        ranking = reranker.run(settings, images, progress=on_progress, should_stop=signals.stop)
    except InputError as exc:
        raise UsageError(str(exc)) from None
    except Interrupted:  # a second signal: stop now
        ranking = what_finished(cancelled=True)
    except Exception as exc:  # whatever stopped the run, what finished is written
        ranking = what_finished(cancelled=False, error=_one_line(exc))
    finally:
        signals.phase, signals.ranking = "writing the outputs", False
        bar.close()

    print_ranking(ranking, args.top)
    written = write_outputs(args, ranking)
    if ranking.error:
        say(f"the run stopped on an unexpected error: {ranking.error}")
        return 1
    if not written:
        return 1
    return signals.exit_code if ranking.cancelled else 0
