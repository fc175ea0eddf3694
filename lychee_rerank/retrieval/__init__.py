"""Search a whole library: index it once with a multilingual image–text embedder, then rerank only
the top K of each query with Lychee (docs/index.md).

    from lychee_rerank import Reranker, RunSettings
    from lychee_rerank.retrieval import Embedder, Index, RetrievalSettings, search_then_rerank, update_index

    embedder = Embedder.load("demo")                           # or google/siglip2-base-patch16-naflex
    index = Index.create("lib.index", embedder=embedder.info.name, dim=embedder.info.dim, root="photos")
    print(update_index(index, embedder, ["photos"]).summary())  # later runs embed only what changed

    settings = RunSettings.build("海边日落 sunset over the sea", model="demo")
    ranking = search_then_rerank(Reranker.load(settings.model), settings,
                                 RetrievalSettings.build("lib.index", 100), embedder=embedder)

Nothing heavy is imported here until used (LanceDB, transformers).
"""

from .embedder import DEFAULT_EMBEDDER, Embedder, EmbedderInfo, default_embedder
from .indexing import IndexReport, update_index
from .search import DEFAULT_K, Retrieval, RetrievalSettings, search, search_then_rerank
from .store import Hit, Index, IndexStoreError

__all__ = [
    "DEFAULT_EMBEDDER",
    "DEFAULT_K",
    "Embedder",
    "EmbedderInfo",
    "Hit",
    "Index",
    "IndexReport",
    "IndexStoreError",
    "Retrieval",
    "RetrievalSettings",
    "default_embedder",
    "search",
    "search_then_rerank",
    "update_index",
]
