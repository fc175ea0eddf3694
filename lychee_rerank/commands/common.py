"""What every command shares: the run-settings arguments and the one ``RunSettings`` built from them,
the checks made before any model loads, the ranking table, the summary line, and the outputs.

Everything printed here goes through ``terminal_safe``: a file name is shown, never interpreted by
the terminal (escape sequences, carriage returns).
"""

from __future__ import annotations

import argparse
import os
import sys

PROG = "lychee-rerank"


class UsageError(Exception):
    """A bad invocation: reported as one line, exit code 2."""


def say(message: str) -> None:
    """One line on stderr, prefixed with the program's name, control characters shown escaped."""
    from ..export import terminal_safe

    print(f"{PROG}: {terminal_safe(message)}", file=sys.stderr)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text}")
    return value


def add_settings_arguments(parser: argparse.ArgumentParser, *, query_required: bool = True, query: bool = True) -> None:
    """The arguments a RunSettings is built from (settings_from_args); ``query=False`` for a
    command whose queries come later (the service: each request brings its own)."""
    from ..execution import MODES
    from ..loading import DTYPES
    from ..preprocess import PREPROCESS_MODES
    from ..quantization import QUANTIZE_MODES

    if query:
        parser.add_argument("--query", "-q", required=query_required,
                            help="the query: Chinese, English or both (may be blank with --query-image)")
        parser.add_argument("--query-image", metavar="PATH", help="an image that is part of the query")
    parser.add_argument("--instruction", help="the task instruction (the model is instruction-aware)")
    parser.add_argument("--model", help="hub id, local directory, or 'demo' (default: $LYCHEE_MODEL or vec-ai/lychee-rerank-mm)")
    parser.add_argument("--mode", choices=MODES, default="auto", help="auto = adaptive batching; sequential = memory-safe")
    parser.add_argument("--dtype", choices=DTYPES, default="auto")
    parser.add_argument("--quantize", choices=QUANTIZE_MODES, default="auto",
                        help="8bit/4bit weights (bitsandbytes) for GPUs under 24 GB; auto picks from free GPU memory, none on CPU")
    parser.add_argument("--max-pixels", type=positive_int, metavar="N", help="pixels per image after resizing (fewer = faster)")
    parser.add_argument("--preprocess", choices=PREPROCESS_MODES, default="exact",
                        help="exact = the model card's image path (default); fast = large JPEGs decoded at a reduced scale")
    cache = parser.add_mutually_exclusive_group()
    cache.add_argument("--cache", metavar="DIR",
                       help="keep each image's vision features in DIR, so a later question about the same images skips "
                       "decoding and the vision tower (default: $LYCHEE_CACHE/features; with --ray: off)")
    cache.add_argument("--no-cache", action="store_true", help="do not use the vision-feature cache")


def settings_from_args(args: argparse.Namespace, **more):
    """The run's one RunSettings, checked (UsageError, one sentence) before any model loads.
    ``more``: further RunSettings fields (a command's own options, the service's stand-in query)."""
    from ..checks import InputError
    from ..settings import RunSettings

    fields = {"query": getattr(args, "query", None), "query_image": getattr(args, "query_image", None), **more}
    try:
        return RunSettings.build(
            fields.pop("query"), model=args.model, dtype=args.dtype, quantize=args.quantize,
            instruction=args.instruction, max_pixels=args.max_pixels, preprocess=args.preprocess, mode=args.mode,
            cache_dir=_cache_dir(args), **fields,
        )
    except InputError as exc:
        raise UsageError(str(exc)) from None


def quiet_libraries() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def load_reranker(model):
    """The Reranker for ``model`` (a run's ModelSettings), its summary said on stderr; None when it
    cannot be loaded (the reason said in one line)."""
    from .. import ModelLoadError, Reranker

    quiet_libraries()
    try:
        reranker = Reranker.load(model)
    except ModelLoadError as exc:
        say(str(exc))
        return None
    say(f"loaded {reranker.info.summary()}")
    if reranker.info.is_demo:
        say("demo model (random weights): the scores are meaningless")
    return reranker


def _cache_dir(args: argparse.Namespace) -> str | None:
    """The feature cache's folder: --cache DIR (checked: UsageError), none with --no-cache, else the
    default folder for a run in this process (said and skipped should it be unusable) and none on Ray
    (every replica would write its own: name a shared folder with --cache)."""
    from ..feature_cache import cache_dir_problem, default_cache_dir

    if args.no_cache:
        return None
    folder = args.cache or (None if getattr(args, "ray", None) else default_cache_dir())
    problem = folder and cache_dir_problem(folder)  # created and checked writable before any model loads
    if problem and args.cache:
        raise UsageError(f"--cache: {problem}")
    if problem:
        say(f"{problem}: the vision-feature cache is off for this run")
        return None
    return folder


def _unwritable(path: str) -> str | None:
    """Why an output file cannot be written, or None. Checked before the model loads."""
    if os.path.isdir(path):
        return "is a folder; name a file to write"
    target = os.path.realpath(path)
    folder = os.path.dirname(target)
    if not os.path.isdir(folder):
        return f"the folder {folder} does not exist"
    if os.path.exists(target) and not os.access(target, os.W_OK):
        return "the file is not writable"
    # Outputs are written to a temporary file beside the target, then renamed over it.
    return None if os.access(folder, os.W_OK) else f"the folder {folder} is not writable"


def check_outputs(args: argparse.Namespace) -> None:
    from ..export import same_file

    csv = getattr(args, "csv", None)  # the index command writes JSON only
    for flag, path in (("--csv", csv), ("--json", args.json)):
        if path is not None and (problem := _unwritable(path)):
            raise UsageError(f"cannot write {flag} {path}: {problem}")
    if csv and args.json and same_file(csv, args.json):
        raise UsageError("--csv and --json name the same file")


def report_skipped(skipped: list[tuple[str, str]]) -> None:
    by_reason: dict[str, list[str]] = {}
    for path, reason in skipped:
        by_reason.setdefault(reason, []).append(path)
    for reason, paths in by_reason.items():
        names = ", ".join(paths[:10]) + (" …" if len(paths) > 10 else "")
        entries = "entry" if len(paths) == 1 else "entries"
        say(f"skipped {len(paths)} {entries}, {reason}: {names}")


def find_inputs(paths: list[str]) -> list[str]:
    """The images under ``paths`` (skipped entries reported); UsageError when a path is missing."""
    from ..inputs import FoundImages, InputPathError, find_images

    try:
        found = find_images(paths) if paths else FoundImages()
    except InputPathError as exc:
        raise UsageError(str(exc)) from None
    report_skipped(found.skipped)
    if paths and not found.images:
        raise UsageError("no images found in " + ", ".join(paths))
    return found.images


def format_table(results, top: int | None = None) -> str:
    from ..export import terminal_safe

    rows = [("rank", "score", "size", "file", "error")]
    shown = [r for r in results if r.status == "scored"][:top] + [r for r in results if r.status != "scored"]
    for r in shown:
        rows.append(
            (
                str(r.rank or "-"),
                f"{r.score:.4f}" if r.score is not None else "-",
                f"{r.width}x{r.height}" if r.width else "-",
                terminal_safe(r.name),
                terminal_safe(r.error or ("not scored (stopped)" if r.status == "pending" else "")),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(
        "  ".join([row[0].rjust(widths[0]), row[1].rjust(widths[1]), row[2].rjust(widths[2]), row[3], row[4]]).rstrip()
        for row in rows
    )


def print_ranking(ranking, top: int | None, where: str = "", note: str = "") -> None:
    """The ranking table on stdout and a one-line summary on stderr (the rank command, Ray or not)."""
    from ..results import describe_cache

    print(format_table(ranking.ranked(), top))
    how = ranking.mode + (f", {where}" if where else "")
    summary = f"{len(ranking.scored)} scored, {len(ranking.errors)} failed in {ranking.elapsed_s:.1f} s ({how})"
    if ranking.retrieval is not None:
        summary += (f"; the top {ranking.retrieval.retrieved} of {ranking.retrieval.searched} indexed images by "
                    f"similarity, {ranking.not_retrieved} not scored (outside the top {ranking.retrieval.settings.k})")
    if ranking.cache_hits is not None:
        summary += f"; feature cache {describe_cache(ranking.cache_hits, ranking.cache_misses)}"
    if note:
        summary += f"; {note}"
    if ranking.pending:
        summary += f"; stopped with {len(ranking.pending)} not scored"
    say(summary)


def write_outputs(args: argparse.Namespace, ranking, **extra) -> bool:
    """Each requested output written on its own, atomically: one that fails does not cost the
    other, and a failed write leaves the previous file as it was. ``extra``: more JSON metadata."""
    from ..export import OutputError, to_csv, to_json, write_atomically

    outputs = [(args.csv, lambda: to_csv(ranking.results)), (args.json, lambda: to_json(ranking, **extra))]
    written = True
    for path, render in outputs:
        if path is None:
            continue
        try:
            write_atomically(path, render())
        except OutputError as exc:
            say(str(exc))
            written = False
    return written
