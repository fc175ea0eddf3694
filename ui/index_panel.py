"""The collection index for server folders (docs/index.md): "N images, M indexed", an Index action
(progress, stop), and the choice between reranking every image and searching the index, then
reranking the top K. All the work goes through ``lychee_rerank.retrieval``.

One index per data folder, in $LYCHEE_INDEX_DIR (default: under $LYCHEE_CACHE), keyed by paths
relative to the data folder (the names the page shows); the embedder is $LYCHEE_EMBEDDER (default
SigLIP 2 base NaFlex). Indexing runs in a background thread (``IndexJob``), like a ranking run.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import streamlit as st

from lychee_rerank import ImageResult
from lychee_rerank.confine import DataFile
from lychee_rerank.demo_model import cache_root
from lychee_rerank.retrieval import DEFAULT_K, Embedder, Index, IndexStoreError, default_embedder, update_index
from lychee_rerank.retrieval.store import key_of

from . import engine_text, fmt
from .i18n import t
from .state import Item
from .widgets import choice

INDEX_DIR_ENV = "LYCHEE_INDEX_DIR"
JOB_KEY = "index_job"
LIVE_REFRESH_S = 1.0


def index_dir(root: Path) -> Path:
    """This data folder's index: $LYCHEE_INDEX_DIR, else one folder per data folder in the cache."""
    configured = os.environ.get(INDEX_DIR_ENV, "").strip()
    if configured:
        return Path(configured).expanduser()
    digest = hashlib.blake2b(str(root).encode("utf-8", "surrogateescape"), digest_size=8).hexdigest()
    return cache_root() / f"library-index-{digest}"


@st.cache_resource(show_spinner=False)
def _embedder(name: str) -> Embedder:
    return Embedder.load(name)


def _open(root: Path) -> Index | None:
    try:
        return Index.open(index_dir(root)) if Index.exists(index_dir(root)) else None
    except IndexStoreError:
        return None


class IndexJob:
    """An index update in a background thread: progress, stop, and its report or error."""

    def __init__(self, root: Path, folder: str, items: list[Item]):
        self.root, self.folder = root, folder
        # The page's own listing: links leading out of the data folder are not in it.
        self.files = [str(root / item.name) for item in items]
        self.progress = None
        self.report = None
        self.error: str | None = None
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._work, name="lychee-index", daemon=True)

    @property
    def running(self) -> bool:
        return self.thread.is_alive()

    def _work(self) -> None:
        try:
            embedder = _embedder(default_embedder())
            directory = index_dir(self.root)
            index = Index.open(directory) if Index.exists(directory) else Index.create(
                directory, embedder=embedder.info.name, dim=embedder.info.dim, root=str(self.root))
            real_root = os.path.realpath(self.root)
            self.report = update_index(
                index, embedder, [str(self.root / self.folder)], files=self.files,
                read=lambda path: DataFile.under(real_root, path).read_bytes(),  # checked where it is opened
                progress=self._progress, should_stop=self.stop_event.is_set)
        except Exception as exc:  # one sentence on the page, never a traceback
            self.error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__

    def _progress(self, event) -> None:
        self.progress = event


def _start(root: Path, folder: str, items: list[Item]) -> None:
    job = IndexJob(root, folder, items)
    st.session_state[JOB_KEY] = job
    job.thread.start()


def _stop() -> None:
    job = st.session_state.get(JOB_KEY)
    if job is not None:
        job.stop_event.set()


@st.fragment(run_every=LIVE_REFRESH_S)
def _live(job: IndexJob) -> None:
    if not job.running:
        st.rerun()  # finished: redraw the page with the new counts
    event = job.progress
    bar, button = st.columns([5, 1], vertical_alignment="bottom")
    done = event.done / event.total if event and event.total else 0.0
    bar.progress(done, text=t("indexing", progress=fmt.progress(event) if event else "…"))
    button.button(t("stop_indexing"), on_click=_stop, key="stop_index_button", icon=":material/stop_circle:")


def _report(report) -> str:
    """What an index update did, in the page's language (the engine's IndexReport.summary, worded)."""
    text = t("index_report", added=report.added, changed=report.changed, removed=report.removed,
             unchanged=report.unchanged, errors=report.errors, embedded=report.embedded,
             elapsed=fmt.seconds(report.elapsed_s), indexed=report.indexed)
    return text + (t("index_report_pending", n=report.pending) if report.pending else "")


def _folder_key(folder: str) -> str:
    return "" if folder in ("", os.curdir) else key_of(folder) + "/"


def indexed_count(index: Index | None, folder: str, items: list[Item]) -> int:
    """How many of these items have an up-to-date vector."""
    if index is None or not items:
        return 0
    rows = index.rows([_folder_key(folder)], ("path", "size", "mtime_ns", "error"))
    current = {r["path"]: r for r in rows.to_pylist() if r["error"] is None}
    count = 0
    for item in items:
        row = current.get(key_of(item.name))
        if row is not None:
            try:
                info = os.stat(item.source.path)
            except OSError:
                continue
            count += (row["size"], row["mtime_ns"]) == (info.st_size, info.st_mtime_ns)
    return count


def panel(root: Path, folder: str, items: list[Item]) -> int | None:
    """The index panel for a server folder; returns K when the user chose to search the index, then
    rerank the top K (None: rerank every image)."""
    job: IndexJob | None = st.session_state.get(JOB_KEY)
    index = _open(root)
    with st.container(border=True):
        left, right = st.columns([3, 1], vertical_alignment="center")
        left.caption(t("index_status", n=len(items), m=indexed_count(index, folder, items)))
        right.button(t("index_action"), key="index_button", icon=":material/manage_search:",
                     on_click=_start, args=(root, folder, items), disabled=bool(job and job.running), help=t("index_help"))
        if job is not None and job.running:
            _live(job)
        elif job is not None and job.error:
            st.error(engine_text.sentence(job.error), icon=":material/error:")
        elif job is not None and job.report is not None:
            st.caption(_report(job.report))
        if index is None or index.count() == 0:
            return None
        mode = choice("radio", t("rerank_scope"), ("all", "top"), store_key="rerank_scope", default="all",
                      labels="scope_", horizontal=True)
        if mode != "top":
            return None
        return int(st.number_input(t("retrieve_k"), min_value=1, value=DEFAULT_K, step=10, key="retrieve_k"))


def top_k(root: Path, folder: str, items: list[Item], settings, k: int) -> tuple[list[Item], list[ImageResult], int]:
    """The K items of the folder most similar to the query (the index's order; files indexed but
    gone since are passed over), a result for each holding its retrieval rank and similarity (not
    scored yet), and how many of the folder's images are left out (not scored)."""
    index = Index.open(index_dir(root))
    by_key = {key_of(item.name): item for item in items}
    picture = None if settings.query_image is None else settings.query_image.data
    vector = _embedder(index.embedder).embed_query(settings.query, picture)
    hits = [h for h in index.search(vector, k, [_folder_key(folder)]) if h.path in by_key]
    firsts = [ImageResult(i, by_key[h.path].name, retrieval_rank=h.retrieval_rank, similarity=h.similarity)
              for i, h in enumerate(hits)]
    return [by_key[h.path] for h in hits], firsts, len(items) - len(hits)
