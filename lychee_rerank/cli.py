"""Command line: ``python -m lychee_rerank rank ...`` and ``python -m lychee_rerank bench ...``.

Exit codes: 0 the run completed (per-file errors included), 1 the model could not be loaded or an
output could not be written, 2 a bad invocation, 130 interrupted (finished scores are still written).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

PROG = "lychee-rerank"


class UsageError(Exception):
    """A bad invocation: reported as one line, exit code 2."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from .execution import MODES
    from .loading import DTYPES

    parser = argparse.ArgumentParser(prog=PROG, description="Rank images against a query with Lychee-rerank-mm.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{rank,bench}")

    rank = commands.add_parser("rank", help="rank image files and folders against a query")
    rank.add_argument("paths", nargs="*", metavar="PATH", help="image files, or folders searched recursively")
    rank.add_argument("--query", "-q", required=True, help="the query: Chinese, English or both")
    rank.add_argument("--query-image", metavar="PATH", help="an image that is part of the query")
    rank.add_argument("--instruction", help="the task instruction (the model is instruction-aware)")
    rank.add_argument("--model", help="hub id, local directory, or 'demo' (default: $LYCHEE_MODEL or vec-ai/lychee-rerank-mm)")
    rank.add_argument("--mode", choices=MODES, default="auto", help="auto = adaptive batching; sequential = memory-safe")
    rank.add_argument("--dtype", choices=DTYPES, default="auto")
    rank.add_argument("--max-pixels", type=_positive_int, metavar="N", help="pixels per image after resizing (fewer = faster)")
    rank.add_argument("--csv", metavar="PATH", help="write the ranking as CSV")
    rank.add_argument("--json", metavar="PATH", help="write the ranking as JSON")
    rank.add_argument("--top", type=_positive_int, metavar="K", help="print only the best K rows")
    from .scale_out import add_ray_arguments  # scale-out on Ray: lychee_rerank/scale_out/

    add_ray_arguments(rank)

    bench = commands.add_parser("bench", help="measure sequential vs batched speed and memory")
    from .bench import add_bench_arguments

    add_bench_arguments(bench)
    return parser


def _quiet_libraries() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def format_table(results, top: int | None = None) -> str:
    rows = [("rank", "score", "size", "file", "error")]
    shown = [r for r in results if r.status == "scored"][:top] + [r for r in results if r.status != "scored"]
    for r in shown:
        rows.append(
            (
                str(r.rank or "-"),
                f"{r.score:.4f}" if r.score is not None else "-",
                f"{r.width}x{r.height}" if r.width else "-",
                r.name,
                r.error or ("not scored (stopped)" if r.status == "pending" else ""),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(
        "  ".join([row[0].rjust(widths[0]), row[1].rjust(widths[1]), row[2].rjust(widths[2]), row[3], row[4]]).rstrip()
        for row in rows
    )


def _write(path: str, text: str) -> None:
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise OSError(f"could not write {path}: {exc.strerror or exc}") from None


def run_rank(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from . import InputError, ModelLoadError, Reranker
    from .export import to_csv, to_json

    from .inputs import InputPathError, find_images
    from .scale_out import asked_for, run_rank_command  # scale-out on Ray: lychee_rerank/scale_out/

    if asked_for(args):
        return run_rank_command(args)
    if not args.paths:
        raise UsageError("give image files or folders to rank (or --manifest FILE with --ray)")
    try:
        found = find_images(args.paths)
    except InputPathError as exc:
        raise UsageError(str(exc)) from None
    images, skipped = found.images, [path for path, _reason in found.skipped]
    if args.query_image and not Path(args.query_image).is_file():
        raise UsageError(f"no such query image: {args.query_image}")
    if not args.query.strip():
        raise UsageError("the query is empty")
    if skipped:
        print(f"{PROG}: not scored ({len(skipped)} files that are not images): {', '.join(skipped[:10])}"
              + (" …" if len(skipped) > 10 else ""), file=sys.stderr)
    if not images:
        raise UsageError("no images found in " + ", ".join(args.paths))

    _quiet_libraries()
    try:
        reranker = Reranker.load(args.model, dtype=args.dtype)
    except ModelLoadError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    if reranker.info.is_demo:
        print(f"{PROG}: demo model (random weights): the scores are meaningless", file=sys.stderr)

    stop = threading.Event()
    previous_handler = signal.signal(signal.SIGINT, lambda *_: stop.set())
    bar = tqdm(total=len(images), unit="img", file=sys.stderr, dynamic_ncols=True)

    def on_progress(event) -> None:
        if event.waiting:
            bar.set_description("waiting")
            return
        bar.update(len(event.new_results))

    try:
        ranking = reranker.rank(
            args.query,
            images,
            query_image=args.query_image,
            instruction=args.instruction,
            mode=args.mode,
            max_pixels=args.max_pixels,
            progress=on_progress,
            should_stop=stop,
        )
    except InputError as exc:
        raise UsageError(str(exc)) from None
    finally:
        bar.close()
        signal.signal(signal.SIGINT, previous_handler)

    ordered = ranking.ranked()
    print(format_table(ordered, args.top))
    scored, failed = len(ranking.scored), len(ranking.errors)
    summary = f"{scored} scored, {failed} failed in {ranking.elapsed_s:.1f} s ({ranking.mode})"
    if ranking.cancelled:
        summary += f"; stopped with {len(ranking.pending)} not scored"
    print(f"{PROG}: {summary}", file=sys.stderr)
    metadata = dict(query=ranking.query, instruction=ranking.instruction, model=ranking.model,
                    demo_model=ranking.is_demo, mode=ranking.mode, cancelled=ranking.cancelled)
    try:
        if args.csv:
            _write(args.csv, to_csv(ranking.results))
        if args.json:
            _write(args.json, to_json(ranking.results, **metadata))
    except OSError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    return 130 if ranking.cancelled else 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "rank":
            return run_rank(args)
        from .bench import run_bench

        return run_bench(args)
    except UsageError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
