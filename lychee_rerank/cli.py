"""Command line: ``python -m lychee_rerank rank|index|bench|serve ...``; each command lives in its own module
(``commands/``, ``scale_out/``, ``bench/``), over the pieces they share (``commands/common.py``).

Exit codes: 0 the run completed (per-file errors included); 1 the model could not be loaded, an
unexpected error stopped the run, or an output could not be written; 2 a bad invocation; 130 stopped
by SIGINT (Ctrl-C), 143 by SIGTERM (128 + the signal number; finished scores are still written).
"""

from __future__ import annotations

import argparse
import signal
import sys

from .commands.common import PROG, UsageError, add_settings_arguments, positive_int, say


def build_parser() -> argparse.ArgumentParser:
    from .bench import add_bench_arguments
    from .commands.index import add_index_arguments
    from .commands.retrieval import add_retrieval_arguments
    from .commands.serve import add_serve_arguments
    from .scale_out import add_ray_arguments

    parser = argparse.ArgumentParser(prog=PROG, description="Rank images against a query with Lychee-rerank-mm.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{rank,index,bench,serve}")

    rank = commands.add_parser("rank", help="rank image files and folders against a query")
    rank.add_argument("paths", nargs="*", metavar="PATH", help="image files, or folders searched recursively")
    add_settings_arguments(rank)
    rank.add_argument("--csv", metavar="PATH", help="write the ranking as CSV")
    rank.add_argument("--json", metavar="PATH", help="write the ranking as JSON")
    rank.add_argument("--top", type=positive_int, metavar="K", help="print only the best K rows")
    add_retrieval_arguments(rank)  # search then rerank: lychee_rerank/commands/retrieval.py
    add_ray_arguments(rank)  # scale-out on Ray: lychee_rerank/scale_out/

    index = commands.add_parser("index", help="build or update the index of a photo library (search then rerank)")
    add_index_arguments(index)

    bench = commands.add_parser("bench", help="measure sequential vs batched speed and memory")
    add_bench_arguments(bench)

    serve = commands.add_parser("serve", help="a /v1/rerank HTTP service for vLLM, Jina and Cohere clients")
    add_serve_arguments(serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):
        # A name or query no terminal encoding can show is escaped, never a crash (PYTHONIOENCODING=ascii).
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        args = build_parser().parse_args(argv)
        if args.command == "rank":
            from .commands.rank import run_rank

            return run_rank(args)
        if args.command == "index":
            from .commands.index import run_index

            return run_index(args)
        if args.command == "serve":
            from .commands.serve import run_serve

            return run_serve(args)
        from .bench import run_bench

        return run_bench(args)
    except UsageError as exc:
        say(str(exc))
        return 2
    except KeyboardInterrupt:  # Ctrl-C before the command's own handlers are in place
        say("interrupted by SIGINT")
        return 128 + signal.SIGINT
