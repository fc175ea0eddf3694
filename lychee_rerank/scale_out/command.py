"""``python -m lychee_rerank rank ... --ray ADDRESS``: the rank command's outputs, computed on Ray."""

from __future__ import annotations

import argparse
import os
import sys


def add_ray_arguments(rank: argparse.ArgumentParser) -> None:
    from ..cli import _positive_int

    group = rank.add_argument_group("scale out on Ray (docs/scale-out.md; needs requirements-ray.txt)")
    group.add_argument("--ray", metavar="ADDRESS", help="run on Ray: 'local' (start Ray here), 'auto' or ray://HOST:10001")
    group.add_argument("--workers", type=_positive_int, metavar="N",
                       help="model replicas (default: one per GPU in the cluster; 1 on CPU)")
    group.add_argument("--manifest", metavar="FILE",
                       help="a text (one per line), CSV ('path' or first column) or Parquet list of paths or URIs, read by Ray")
    group.add_argument("--out", metavar="DIR", help="write results as Parquet shards here as they finish")
    group.add_argument("--resume", action="store_true", help="skip the inputs that already have a row in --out DIR")
    group.add_argument("--chunk-size", type=_positive_int, metavar="N",
                       help="images per replica call: the unit of progress and of work lost if a replica dies")


def asked_for(args: argparse.Namespace) -> bool:
    """Whether the rank command was given any scale-out option."""
    return any(getattr(args, name, None) for name in ("ray", "workers", "manifest", "out", "resume", "chunk_size"))


def run_rank_command(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..cli import PROG, UsageError, checked_inputs, print_ranking, write_outputs
    from ..loading import ModelLoadError
    from ..reranker import InputError

    if not args.ray:
        raise UsageError("--workers, --manifest, --out, --resume and --chunk-size need --ray ADDRESS (local, auto or ray://HOST:10001)")
    if bool(args.manifest) == bool(args.paths):
        raise UsageError("give image files and folders, or --manifest FILE, not both")
    if args.resume and not args.out:
        raise UsageError("--resume needs --out DIR, the folder of the run to continue")
    images, query, _ = checked_inputs(args)
    # Replicas get the query image as encoded bytes (small, picklable); it has already decoded here.
    query_image = None
    if args.query_image:
        with open(args.query_image, "rb") as file:
            query_image = file.read()

    from .driver import RayUnavailable, ScaleOutError, rank_on_ray, require_ray
    from .shards import OutDirError

    try:
        require_ray()
    except RayUnavailable as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
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
                query, images, manifest=args.manifest, model=args.model, dtype=args.dtype,
                query_image=query_image, instruction=args.instruction, mode=args.mode, max_pixels=args.max_pixels,
                address=args.ray, workers=args.workers, chunk_size=args.chunk_size, out_dir=args.out,
                resume=args.resume, progress=on_progress,
            )
        finally:
            bar.close()
    except KeyboardInterrupt:  # while Ray starts or stops; in the scoring loop it only stops the run
        print(f"{PROG}: interrupted" + (f"; finished results are in {args.out}: run again with --resume" if args.out else ""),
              file=sys.stderr)
        return 130
    except (InputError, OutDirError) as exc:
        raise UsageError(str(exc)) from None
    except ModelLoadError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except ScaleOutError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        if args.out:
            print(f"{PROG}: finished results are in {args.out}: run again with --resume", file=sys.stderr)
        return 1

    ranking = run.ranking
    if ranking.is_demo:
        print(f"{PROG}: demo model (random weights): the scores are meaningless", file=sys.stderr)
    where = f"{run.workers} Ray worker{'s' if run.workers > 1 else ''} on {'GPUs' if run.gpus_per_worker else 'CPU'}"
    print_ranking(ranking, args.top, where, f"{run.already_done} were already in {args.out}" if run.already_done else "")
    if ranking.error:
        print(f"{PROG}: a replica stopped early: {ranking.error}", file=sys.stderr)
    if (ranking.cancelled or ranking.error) and args.out:
        print(f"{PROG}: to finish, run the same command with --resume", file=sys.stderr)
    if not write_outputs(args, ranking):
        return 1
    if ranking.cancelled:
        return 130
    return 1 if ranking.error else 0
