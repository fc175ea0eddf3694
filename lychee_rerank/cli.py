"""Command line: ``python -m lychee_rerank rank ...`` and ``python -m lychee_rerank bench ...``.

The rule: a run ends with every input accounted for — scored, errored or pending — whatever happens.
A file that cannot be scored is a row with its error; Ctrl-C or SIGTERM stops the run between
forwards; an unexpected error stops it too. In every case the table is printed and every requested
output is written with one row per image. Everything that can be checked before the model loads
(paths, outputs, settings, the query image) is.

Exit codes: 0 the run completed (per-file errors included); 1 the model could not be loaded, an
unexpected error stopped the run, or an output could not be written; 2 a bad invocation; 130 stopped
by SIGINT (Ctrl-C), 143 by SIGTERM (128 + the signal number; finished scores are still written).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
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
    from .preprocess import PREPROCESS_MODES
    from .loading import DTYPES
    from .quantization import QUANTIZE_MODES

    parser = argparse.ArgumentParser(prog=PROG, description="Rank images against a query with Lychee-rerank-mm.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{rank,bench}")

    rank = commands.add_parser("rank", help="rank image files and folders against a query")
    rank.add_argument("paths", nargs="*", metavar="PATH", help="image files, or folders searched recursively")
    rank.add_argument("--query", "-q", required=True, help="the query: Chinese, English or both (may be blank with --query-image)")
    rank.add_argument("--query-image", metavar="PATH", help="an image that is part of the query")
    rank.add_argument("--instruction", help="the task instruction (the model is instruction-aware)")
    rank.add_argument("--model", help="hub id, local directory, or 'demo' (default: $LYCHEE_MODEL or vec-ai/lychee-rerank-mm)")
    rank.add_argument("--mode", choices=MODES, default="auto", help="auto = adaptive batching; sequential = memory-safe")
    rank.add_argument("--dtype", choices=DTYPES, default="auto")
    rank.add_argument("--quantize", choices=QUANTIZE_MODES, default="auto",
                      help="8bit/4bit weights (bitsandbytes) for GPUs under 24 GB; auto picks from free GPU memory, none on CPU")
    rank.add_argument("--max-pixels", type=_positive_int, metavar="N", help="pixels per image after resizing (fewer = faster)")
    rank.add_argument("--preprocess", choices=PREPROCESS_MODES, default="exact",
                      help="exact = the model card's image path (default); fast = large JPEGs decoded at a reduced scale")
    rank.add_argument("--csv", metavar="PATH", help="write the ranking as CSV")
    rank.add_argument("--json", metavar="PATH", help="write the ranking as JSON")
    rank.add_argument("--top", type=_positive_int, metavar="K", help="print only the best K rows")
    from .scale_out import add_ray_arguments  # scale-out on Ray: lychee_rerank/scale_out/

    add_ray_arguments(rank)

    bench = commands.add_parser("bench", help="measure sequential vs batched speed and memory")
    from .bench import add_bench_arguments

    add_bench_arguments(bench)
    return parser


class Interrupted(BaseException):
    """A signal that cannot wait for the run to stop between forwards (see StopSignals)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class StopSignals:
    """SIGINT and SIGTERM, handled alike. While images are being ranked, the first signal stops the
    run between forwards (what finished is kept and written); at any other time (checking the
    inputs, loading the model, writing the outputs), or on a second signal, Interrupted is raised."""

    HANDLED = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.received: int | None = None
        self.ranking = False
        self.phase = "checking the inputs"
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopSignals":
        for signum in self.HANDLED:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *_exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, _frame) -> None:
        first = self.received is None
        self.received = self.received or signum
        if self.ranking and first:
            self.stop.set()
            return
        raise Interrupted(signum)

    @property
    def exit_code(self) -> int:
        return 128 + (self.received or signal.SIGINT)


def _quiet_libraries() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def format_table(results, top: int | None = None) -> str:
    from .export import readable

    rows = [("rank", "score", "size", "file", "error")]
    shown = [r for r in results if r.status == "scored"][:top] + [r for r in results if r.status != "scored"]
    for r in shown:
        rows.append(
            (
                str(r.rank or "-"),
                f"{r.score:.4f}" if r.score is not None else "-",
                f"{r.width}x{r.height}" if r.width else "-",
                readable(r.name),
                readable(r.error or ("not scored (stopped)" if r.status == "pending" else "")),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(
        "  ".join([row[0].rjust(widths[0]), row[1].rjust(widths[1]), row[2].rjust(widths[2]), row[3], row[4]]).rstrip()
        for row in rows
    )


def _unwritable(path: str) -> str | None:
    """Why an output file cannot be written, or None. Checked before the model loads."""
    if os.path.isdir(path):
        return "is a folder; name a file to write"
    if os.path.exists(path):
        return None if os.access(path, os.W_OK) else "the file is not writable"
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        return f"the folder {folder} does not exist"
    return None if os.access(folder, os.W_OK) else f"the folder {folder} is not writable"


def check_outputs(args: argparse.Namespace) -> None:
    for flag, path in (("--csv", args.csv), ("--json", args.json)):
        if path is not None and (problem := _unwritable(path)):
            raise UsageError(f"cannot write {flag} {path}: {problem}")
    if args.csv and args.json and os.path.abspath(args.csv) == os.path.abspath(args.json):
        raise UsageError("--csv and --json name the same file")


def _report_skipped(skipped: list[tuple[str, str]]) -> None:
    from .export import readable

    by_reason: dict[str, list[str]] = {}
    for path, reason in skipped:
        by_reason.setdefault(reason, []).append(readable(path))
    for reason, paths in by_reason.items():
        names = ", ".join(paths[:10]) + (" …" if len(paths) > 10 else "")
        entries = "entry" if len(paths) == 1 else "entries"
        print(f"{PROG}: skipped {len(paths)} {entries}, {reason}: {names}", file=sys.stderr)


def checked_inputs(args: argparse.Namespace):
    """(images, query, query image) after every check that needs no model; UsageError otherwise.
    The one set of checks for the single-process and the Ray command."""
    from . import DEFAULT_MIN_PIXELS, InputError
    from .checks import check_pixels, check_query, load_query_image
    from .inputs import FoundImages, InputPathError, find_images

    check_outputs(args)
    try:
        found = find_images(args.paths) if args.paths else FoundImages()
        query = check_query(args.query, args.query_image is not None)
        if args.max_pixels is not None:
            check_pixels(DEFAULT_MIN_PIXELS, args.max_pixels)
        query_picture = load_query_image(args.query_image) if args.query_image else None
    except (InputPathError, InputError) as exc:
        raise UsageError(str(exc)) from None
    _report_skipped(found.skipped)
    if args.paths and not found.images:
        raise UsageError("no images found in " + ", ".join(args.paths))
    return found.images, query, query_picture


def print_ranking(ranking, top: int | None, where: str = "", note: str = "") -> None:
    """The ranking table on stdout and a one-line summary on stderr (the rank command, Ray or not)."""
    print(format_table(ranking.ranked(), top))
    how = ranking.mode + (f", {where}" if where else "")
    summary = f"{len(ranking.scored)} scored, {len(ranking.errors)} failed in {ranking.elapsed_s:.1f} s ({how})"
    if note:
        summary += f"; {note}"
    if ranking.pending:
        summary += f"; stopped with {len(ranking.pending)} not scored"
    print(f"{PROG}: {summary}", file=sys.stderr)


def write_outputs(args: argparse.Namespace, ranking) -> bool:
    """Each requested output written on its own: one that fails does not cost the other."""
    from .export import to_csv, to_json

    metadata = dict(query=ranking.query, query_image=args.query_image, instruction=ranking.instruction,
                    model=ranking.model, demo_model=ranking.is_demo, mode=ranking.mode,
                    cancelled=ranking.cancelled, error=ranking.error)
    outputs = [(args.csv, lambda: to_csv(ranking.results)), (args.json, lambda: to_json(ranking.results, **metadata))]
    written = True
    for path, render in outputs:
        if path is None:
            continue
        try:
            Path(path).write_text(render(), encoding="utf-8")
        except OSError as exc:
            print(f"{PROG}: could not write {path}: {exc.strerror or exc}", file=sys.stderr)
            written = False
    return written


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def run_rank(args: argparse.Namespace) -> int:
    from .scale_out import asked_for, run_rank_command  # scale-out on Ray: lychee_rerank/scale_out/

    if asked_for(args):  # before StopSignals: the Ray path stops on KeyboardInterrupt
        return run_rank_command(args)
    with StopSignals() as signals:
        try:
            return _rank(args, signals)
        except Interrupted as exc:
            print(f"{PROG}: interrupted by {signal.Signals(exc.signum).name} while {signals.phase}", file=sys.stderr)
            return 128 + exc.signum


def _rank(args: argparse.Namespace, signals: StopSignals) -> int:
    from tqdm import tqdm

    from . import DEFAULT_INSTRUCTION, ImageResult, InputError, ModelLoadError, Ranking, Reranker

    if not args.paths:
        raise UsageError("give image files or folders to rank (or --manifest FILE with --ray)")
    images, query, query_picture = checked_inputs(args)

    signals.phase = "loading the model"
    _quiet_libraries()
    try:
        reranker = Reranker.load(args.model, dtype=args.dtype, quantize=args.quantize)
    except ModelLoadError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    print(f"{PROG}: loaded {reranker.info.summary()}", file=sys.stderr)
    if reranker.info.is_demo:
        print(f"{PROG}: demo model (random weights): the scores are meaningless", file=sys.stderr)

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
        """The run as far as the progress events tell, should rank() raise instead of returning."""
        return Ranking(
            query=query, instruction=(args.instruction or "").strip() or DEFAULT_INSTRUCTION,
            results=tuple(finished.get(i, ImageResult(i, name)) for i, name in enumerate(images)),
            mode=args.mode, elapsed_s=time.perf_counter() - start, cancelled=cancelled,
            model=reranker.info.name, is_demo=reranker.info.is_demo, error=error,
        )

    signals.phase, signals.ranking = "ranking", True
    try:
        ranking = reranker.rank(
            query,
            images,
            query_image=query_picture,
            instruction=args.instruction,
            mode=args.mode,
            max_pixels=args.max_pixels,
            preprocess=args.preprocess,
            progress=on_progress,
            should_stop=signals.stop,
        )
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
        print(f"{PROG}: the run stopped on an unexpected error: {ranking.error}", file=sys.stderr)
        return 1
    if not written:
        return 1
    return signals.exit_code if ranking.cancelled else 0


def main(argv: list[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):
        # A name or query no terminal encoding can show is escaped, never a crash (PYTHONIOENCODING=ascii).
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        args = build_parser().parse_args(argv)
        if args.command == "rank":
            return run_rank(args)
        from .bench import run_bench

        return run_bench(args)
    except UsageError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C before the command's own handlers are in place
        print(f"{PROG}: interrupted by SIGINT", file=sys.stderr)
        return 128 + signal.SIGINT
