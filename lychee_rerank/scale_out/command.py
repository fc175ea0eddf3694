"""``python -m lychee_rerank rank ... --ray ADDRESS``: the rank command's outputs, computed on Ray."""

from __future__ import annotations

import argparse
import os
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

    try:
        try:
            run = rank_on_ray(
                settings, images, manifest=args.manifest, address=args.ray, workers=args.workers,
                chunk_size=args.chunk_size, out_dir=args.out, resume=args.resume, progress=on_progress,
            )
        finally:
            bar.close()
    except KeyboardInterrupt:  # while Ray starts or stops; in the scoring loop it only stops the run
        say("interrupted" + (f"; finished results are in {args.out}: run again with --resume" if args.out else ""))
        return 130
    except (InputError, OutDirError) as exc:
        raise UsageError(str(exc)) from None
    except ModelLoadError as exc:
        say(str(exc))
        return 1
    except ScaleOutError as exc:
        say(str(exc))
        if args.out:
            say(f"finished results are in {args.out}: run again with --resume")
        return 1

    ranking = run.ranking
    if ranking.is_demo:
        say("demo model (random weights): the scores are meaningless")
    where = f"{run.workers} Ray worker{'s' if run.workers > 1 else ''} on {'GPUs' if run.gpus_per_worker else 'CPU'}"
    print_ranking(ranking, args.top, where, f"{run.already_done} were already in {args.out}" if run.already_done else "")
    if ranking.error:
        say(f"a replica stopped early: {ranking.error}")
    if (ranking.cancelled or ranking.error) and args.out:
        say("to finish, run the same command with --resume")
    if not write_outputs(args, ranking):
        return 1
    if ranking.cancelled:
        return 130
    return 1 if ranking.error else 0
