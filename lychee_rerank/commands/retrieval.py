"""``rank --index DIR --retrieve K``: the arguments of search then rerank, and the one
``RetrievalSettings`` built from them (docs/index.md)."""

from __future__ import annotations

import argparse

from .common import UsageError, positive_int


def add_retrieval_arguments(rank: argparse.ArgumentParser) -> None:
    """``rank --index DIR --retrieve K``: search the index, rerank the top K (PATHs restrict the search)."""
    group = rank.add_argument_group("search then rerank (docs/index.md)")
    group.add_argument("--index", metavar="DIR", help="search this index (built by the index command) and rerank "
                                                      "the most similar images only; PATHs, if given, restrict the search")
    group.add_argument("--retrieve", type=positive_int, metavar="K", help="how many images to rerank (default 100)")
    group.add_argument("--embedder", help="the embedder for the query (default and only choice: the index's own)")


def retrieval_from_args(args: argparse.Namespace):
    """The run's RetrievalSettings, checked (UsageError, one sentence), or None without --index."""
    from ..checks import InputError
    from ..retrieval import DEFAULT_K, RetrievalSettings

    if not args.index:
        if args.retrieve or args.embedder:
            raise UsageError("--retrieve and --embedder need --index DIR")
        return None
    try:
        return RetrievalSettings.build(args.index, args.retrieve or DEFAULT_K, embedder=args.embedder, under=args.paths)
    except InputError as exc:
        raise UsageError(str(exc)) from None
