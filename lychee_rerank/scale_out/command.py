"""``python -m lychee_rerank rank ... --ray ADDRESS``: the rank command's outputs, computed on Ray."""

from __future__ import annotations

import argparse
import os
import signal
import sys

from ..commands.common import (
    UsageError,
    check_outputs,
    find_inputs,
    positive_int,
    print_ranking,
    say,
    settings_from_args,
    write_outputs,
)
from ..commands.signals import Interrupted, StopSignals


def add_ray_arguments(rank: argparse.ArgumentParser) -> None:
    group = rank.add_argument_group("scale out on Ray (docs/scale-out.md; needs requirements-ray.txt)")
    group.add_argument("--ray", metavar="ADDRESS", help="run on Ray: 'local' (start Ray here), 'auto' or ray://HOST:10001")
    group.add_argument("--workers", type=positive_int, metavar="N",
                       help="model replicas (default: one per GPU in the cluster; 1 on CPU)")
    group.add_argument("--manifest", metavar="FILE",
                       help="a text (one per line), CSV ('path' or first column) or Parquet list of paths or URIs, read by Ray")
    group.add_argument("--out", metavar="DIR", help="write results as Parquet shards here as they finish")
    group.add_argument("--resume", action="store_true", help="skip the inputs that already have a row in --out DIR")
    group.add_argument("--chunk-size", type=positive_int, metavar="N",
                       help="images per replica call: the unit of progress and of work lost if a replica dies")


def asked_for(args: argparse.Namespace) -> bool:
    """Whether the rank command was given any scale-out option."""
    return any(getattr(args, name, None) for name in ("ray", "workers", "manifest", "out", "resume", "chunk_size"))


def run_rank_command(args: argparse.Namespace) -> int:
    """The Ray rank command. SIGINT and SIGTERM stop it as they stop the single-process command:
    during the run, every finished chunk is kept and every requested output written (the rest marked
    not scored), exit 128 + the signal; at any other time, at once with one line."""
    with StopSignals() as signals:
        try:
            return _rank_on_ray(args, signals)
        except Interrupted as exc:
            say(f"interrupted by {signal.Signals(exc.signum).name} while {signals.phase}" + _resume_hint(args))
            return 128 + exc.signum


def _resume_hint(args: argparse.Namespace) -> str:
    if args.out:
        return f"; finished results are in {args.out}: run the same command with --resume"
    return "; without --out DIR there is nothing to resume from"


def _rank_on_ray(args: argparse.Namespace, signals) -> int:
    from tqdm import tqdm

    from ..checks import InputError
    from ..loading import ModelLoadError

    if not args.ray:
        raise UsageError("--workers, --manifest, --out, --resume and --chunk-size need --ray ADDRESS (local, auto or ray://HOST:10001)")
    if bool(args.manifest) == bool(args.paths):
        raise UsageError("give image files and folders, or --manifest FILE, not both")
    if args.resume and not args.out:
        raise UsageError("--resume needs --out DIR, the folder of the run to continue")
    check_outputs(args)
    settings = settings_from_args(args)  # the query image travels in it as bytes, already checked
    images = find_inputs(args.paths)

    from .driver import RayUnavailable, ScaleOutError, rank_on_ray, require_ray
    from .shards import OutDirError

    try:
        require_ray()
    except RayUnavailable as exc:
        say(str(exc))
        return 1
    # Ray's C++ core logs a line when replicas start, into the progress bar; a user's setting wins.
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    bar = tqdm(total=len(images) or None, unit="img", file=sys.stderr, dynamic_ncols=True, desc="starting Ray")

    def on_progress(event) -> None:
        bar.set_description("scoring" if event.done < event.total else "done")
        bar.total = event.total
        bar.update(event.done - bar.n)

    def notice(message: str) -> None:
        with tqdm.external_write_mode(file=sys.stderr):
            say(message)

    signals.phase = "running on Ray"
    try:
        try:
            run = rank_on_ray(
                settings, images, manifest=args.manifest, address=args.ray, workers=args.workers,
                chunk_size=args.chunk_size, out_dir=args.out, resume=args.resume, progress=on_progress,
                notice=notice,
            )
        finally:
            bar.close()
    except (InputError, OutDirError) as exc:
        raise UsageError(str(exc)) from None
    except ModelLoadError as exc:
        say(str(exc))
        return 1
    except ScaleOutError as exc:
        say(str(exc) + _resume_hint(args))
        return 1

    signals.phase = "writing the outputs"
    ranking = run.ranking
    if ranking.is_demo:
        say("demo model (random weights): the scores are meaningless")
    where = f"{run.workers} Ray worker{'s' if run.workers > 1 else ''} on {'GPUs' if run.gpus_per_worker else 'CPU'}"
    print_ranking(ranking, args.top, where, f"{run.already_done} were already in {args.out}" if run.already_done else "")
    if run.signal:
        say(f"stopped by {signal.Signals(run.signal).name}" + _resume_hint(args))
    if ranking.error:
        say(f"the run did not finish: {ranking.error}" + _resume_hint(args))
    written = write_outputs(args, ranking)
    if ranking.error or not written:
        return 1
    return 128 + run.signal if run.signal else 0
