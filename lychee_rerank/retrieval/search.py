"""Search then rerank: the index picks the K images most similar to the query, the reranker scores
those K under the run's one ``RunSettings``; the rest of the collection is not scored, and says so.

``RetrievalSettings`` is the first stage's settings object (the index, K, the embedder, the folders
searched), built once by each front end beside the ``RunSettings`` and recorded whole in the
outputs (``Retrieval.record``, in the JSON's ``retrieval``).
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from ..checks import InputError
from ..results import Progress, Ranking
from ..settings import RunSettings
from .embedder import Embedder
from .indexing import scope_keys
from .store import Hit, Index, IndexStoreError

DEFAULT_K = 100


@dataclass(frozen=True)
class RetrievalSettings:
    """The first stage: which index, how many candidates, which embedder, which folders."""

    index: str  # the index folder
    k: int = DEFAULT_K
    embedder: str = ""  # the index's own (a query must be embedded by the model that made the vectors)
    under: tuple[str, ...] = ()  # files and folders the search is restricted to (default: the whole index)

    @classmethod
    def build(cls, index: str | os.PathLike, k: int = DEFAULT_K, *, embedder: str | None = None,
              under: Sequence[str] = ()) -> "RetrievalSettings":
        """Checked settings (InputError, one sentence): the index exists, K is positive, the
        embedder (when named) is the index's own, the folders lie inside its root."""
        if int(k) < 1:
            raise InputError(f"the number of images to retrieve must be at least 1, not {k}")
        try:
            opened = Index.open(index)
            scope_keys(under, str(opened.root))
        except IndexStoreError as exc:
            raise InputError(str(exc)) from None
        if embedder and embedder != opened.embedder:
            raise InputError(f"the index in {index} was built with the embedder {opened.embedder}, not {embedder}")
        for path in under:
            if not os.path.exists(path):
                raise InputError(f"no such file or folder: {path}")
        return cls(os.fspath(index), int(k), opened.embedder, tuple(os.fspath(p) for p in under))

    def record(self) -> dict:
        return {"index": self.index, "retrieve": self.k, "embedder": self.embedder, "under": list(self.under)}


@dataclass(frozen=True)
class Retrieval:
    """What the first stage did."""

    settings: RetrievalSettings
    searched: int  # vectors in the searched part of the index
    retrieved: int  # candidates handed to the reranker (K, or fewer when the index holds fewer)
    search_s: float  # embedding the query and searching

    @property
    def not_retrieved(self) -> int:
        return max(0, self.searched - self.retrieved)

    def record(self) -> dict:
        return {**self.settings.record(), "searched": self.searched, "retrieved": self.retrieved,
                "not_retrieved": self.not_retrieved, "search_s": self.search_s}


def search(index: Index, embedder: Embedder, settings: RunSettings, retrieval: RetrievalSettings) -> tuple[list[Hit], Retrieval]:
    """The K images most similar to the run's query (text, image, or both)."""
    start = time.perf_counter()
    under = scope_keys(retrieval.under, str(index.root))
    picture = None if settings.query_image is None else settings.query_image.data
    vector = embedder.embed_query(settings.query, picture)
    hits = index.search(vector, retrieval.k, under)
    searched = index.count(under)
    return hits, Retrieval(retrieval, searched, len(hits), time.perf_counter() - start)


def display_name(path: str) -> str:
    """A hit's name in a ranking: relative to the working folder when inside it, else absolute."""
    relative = os.path.relpath(path)
    return path if relative.startswith(os.pardir) else relative


def with_retrieval(ranking: Ranking, hits: Sequence[Hit], retrieval: Retrieval) -> Ranking:
    """The reranked candidates (``ranking``: one result per hit, in the hits' order) with each row's
    retrieval rank and similarity, the first stage recorded, and the search counted in elapsed_s."""
    results = tuple(
        dataclasses.replace(result, retrieval_rank=hit.retrieval_rank, similarity=hit.similarity)
        for result, hit in zip(ranking.results, hits)
    )
    return dataclasses.replace(ranking, results=results, retrieval=retrieval,
                               elapsed_s=retrieval.search_s + ranking.elapsed_s)


def search_then_rerank(
    reranker,
    settings: RunSettings,
    retrieval: RetrievalSettings,
    *,
    embedder: Embedder | None = None,
    progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Ranking:
    """Search the index, then ``reranker.run(settings, top_k)``. The embedder is loaded when not
    given (the index's own). ``elapsed_s`` counts from the search to the last score (no loading)."""
    index = Index.open(retrieval.index)
    embedder = embedder or Embedder.load(retrieval.embedder)
    hits, done = search(index, embedder, settings, retrieval)
    ranking = reranker.run(settings, [h.file for h in hits], names=[display_name(h.file) for h in hits],
                           progress=progress, should_stop=should_stop)
    return with_retrieval(ranking, hits, done)
