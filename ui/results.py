"""The ranked results of a run: summary, downloads (CSV, JSON, ZIP of originals), filters, a paged
gallery with a full-size viewer, and a table.

The display filters (top K, minimum score, a file name to find) never score anything again; a
file found keeps its rank in the whole ranking. The gallery pages the filtered ranking (a pager
above and below it; changing "Per page" keeps the first image shown on screen); the viewer walks
the same ranking with Previous/Next (buttons, or the arrow keys). The ZIP holds the original files
of the images shown, or of the rows selected in the table, named by rank: it is written to a
temporary file when the button is clicked, and Streamlit's copy of it is released once downloaded
(ui/session.py); a file that can no longer be read is named on the page and left out.
"""

from __future__ import annotations

import html
import logging
import math
import os
import shutil
import tempfile
from typing import BinaryIO, Callable, Sequence

import pandas as pd
import streamlit as st

from lychee_rerank import ImageError, ImageResult, RunSettings, archive, export
from lychee_rerank.results import ranked

from . import downloads, engine_text, fmt, media, session
from . import state as run_state
from .i18n import t
from .state import Run
from .widgets import choice

PERSIST = "session"  # filters keep their values across page switches
VIEWER_KEY = "viewer_item"  # index (in run.items) of the image the viewer shows; absent: closed
PAGE_KEY = "gallery_page"  # the gallery's page, shared by the pagers above and below it
PER_PAGE_KEY = "gallery_per_page"
PER_PAGE_SHOWN_KEY = "gallery_per_page_shown"  # the page size the gallery was last drawn with
TABLE_KEY = "results_table"
PER_PAGE_OPTIONS = (20, 40, 80, 160)
# Previews in the table for the first rows only: a table of 10,000 rows would otherwise decode 10,000
# images before it shows.
TABLE_PREVIEW_ROWS = 300
# Streamlit serves a download from its memory (its only way): beyond this, fewer images must be chosen.
ZIP_LIMIT_BYTES = 1_000_000_000  # served from memory (Streamlit's download button, without the app's route)
ZIP_READY_KEY = "zip_ready"  # the ZIP prepared on disk for this session: its address and what it holds
ZIP_LEFT_OUT_NAMED = 3  # files named on the page when some cannot be read (NOT_INCLUDED.txt has them all)
log = logging.getLogger("lychee_rerank.app")


# -- viewer -----------------------------------------------------------------------------------------
def _open_viewer(index: int) -> None:
    st.session_state[VIEWER_KEY] = index


def _close_viewer() -> None:
    st.session_state.pop(VIEWER_KEY, None)


def _viewer(run: Run, shown: Sequence[ImageResult]) -> None:
    """The full-size view of ``st.session_state[VIEWER_KEY]``, with Previous/Next through ``shown``
    (the ranking as filtered on the page). Fits the screen whatever the image's shape."""
    order = [r.index for r in shown]
    by_index = {r.index: r for r in shown}

    @st.dialog(t("full_view"), width="large", on_dismiss=_close_viewer)
    def dialog() -> None:
        index = st.session_state.get(VIEWER_KEY)
        if index is None or index not in by_index:
            return
        position = order.index(index)
        item, result = run.items[index], by_index[index]
        with st.container(key="viewer_picture", horizontal_alignment="center"):
            picture = media.full_view(item)
            if picture is None:
                st.warning(t("cannot_display"))
            else:
                st.image(picture, width="content")
        back, middle, forward = st.columns([1, 4, 1], vertical_alignment="center")
        at_start, at_end = position == 0, position == len(order) - 1
        back.button(t("previous"), icon=":material/chevron_left:", shortcut="Left", key="viewer_previous",
                    disabled=at_start, on_click=_open_viewer, args=(order[max(0, position - 1)],), width="stretch")
        forward.button(t("next"), icon=":material/chevron_right:", shortcut="Right", key="viewer_next",
                       disabled=at_end, on_click=_open_viewer, args=(order[min(len(order) - 1, position + 1)],),
                       width="stretch")
        details = [f"#{result.rank}", f"{t('col_score')} {result.score:.4f}"]
        if result.width:
            details.append(f"{result.width}×{result.height} px")
        if result.visual_tokens:
            details.append(t("tokens_unit", n=result.visual_tokens))
        details.append(t("viewer_position", n=position + 1, total=len(order)))
        with middle:
            st.markdown(f"**{fmt.md_escape(item.name)}**  \n" + " · ".join(details),
                        help=t("full_view_note", px=media.FULL_VIEW_SIDE))
            st.download_button(
                t("download_original"), data=media.original_bytes(item), file_name=media.download_name(item.name),
                mime=media.mime_type(item.name), on_click="ignore", key="viewer_original",
                icon=":material/download:", type="tertiary",
            )

    dialog()


# -- gallery ----------------------------------------------------------------------------------------
def _page_chosen(widget_key: str) -> None:
    """Either pager moves both (the next run draws both at the page chosen)."""
    st.session_state[PAGE_KEY] = st.session_state.get(widget_key)


def _per_page_changed() -> None:
    """A new page size keeps the first image shown on screen: the page that holds it."""
    old = st.session_state.get(PER_PAGE_SHOWN_KEY)
    new = st.session_state.get(PER_PAGE_KEY)
    if old and new:
        first = (st.session_state.get(PAGE_KEY, 1) - 1) * old
        st.session_state[PAGE_KEY] = first // new + 1


def _pager(pages: int, where: str, layout: str) -> int:
    """A pager at the session's page. Its key names the page it starts at, so it is never set through
    session state (Streamlit warns when a widget has both a default and a session-state value)."""
    page = min(max(1, st.session_state.get(PAGE_KEY, 1)), pages)
    st.session_state[PAGE_KEY] = page
    key = f"pager_{where}_{layout}_{page}"
    st.pagination(pages, default=page, key=key, max_visible_pages=9, on_change=_page_chosen, args=(key,))
    return page


def _gallery(run: Run, shown: Sequence[ImageResult], ncols: int, per_page: int) -> None:
    pages = max(1, math.ceil(len(shown) / per_page))
    layout = f"{pages}x{per_page}"  # other page counts are other pagers
    page = _pager(pages, "top", layout) if pages > 1 else 1
    st.session_state[PER_PAGE_SHOWN_KEY] = per_page
    visible = shown[(page - 1) * per_page: page * per_page]
    for start in range(0, len(visible), ncols):
        columns = st.columns(ncols)
        for column, result in zip(columns, visible[start: start + ncols]):
            item = run.items[result.index]
            with column.container(border=True, key=f"card_{result.index}"):
                st.image(media.card_thumb(item) or media.blank_card(), width="stretch")
                st.markdown(t("card_score", rank=result.rank, score=f"{result.score:.4f}"))
                if result.retrieval_rank is not None:  # search then rerank: where the first stage put it
                    st.caption(t("card_retrieval", rank=result.retrieval_rank, similarity=f"{result.similarity:.3f}"))
                # The file's name opens the viewer: one line, cut with an ellipsis. Hovering shows it whole
                # (the browser does that for a cut label), with its folder when it has one.
                own_name = media.download_name(item.name)
                st.button(fmt.md_escape(own_name), key=f"view_{result.index}", icon=":material/open_in_full:",
                          type="tertiary", wrap=False, width="stretch", on_click=_open_viewer, args=(result.index,),
                          help=fmt.md_escape(item.name) if own_name != item.name else None)
    if pages > 1:
        _pager(pages, "bottom", layout)


# -- table ------------------------------------------------------------------------------------------
def _size(width: int | None, height: int | None) -> str:
    return f"{width}×{height}" if width else ""


def _table(run: Run, shown: Sequence[ImageResult]) -> list[ImageResult]:
    """The table of ``shown``; returns the rows the user selected."""
    frame = pd.DataFrame(
        {
            "rank": [r.rank for r in shown],
            "preview": [
                media.table_thumb_uri(run.items[r.index]) if n < TABLE_PREVIEW_ROWS else None
                for n, r in enumerate(shown)
            ],
            "file": [r.name for r in shown],
            "score": [r.score for r in shown],
            "size": [_size(r.width, r.height) for r in shown],
            "model_size": [_size(r.model_width, r.model_height) for r in shown],
            "tokens": [r.visual_tokens for r in shown],
        }
    )
    if any(r.retrieval_rank is not None for r in shown):  # search then rerank: the first stage beside the score
        frame.insert(4, "retrieval_rank", [r.retrieval_rank for r in shown])
        frame.insert(5, "similarity", [r.similarity for r in shown])
    if len(shown) > TABLE_PREVIEW_ROWS:
        st.caption(t("table_previews", n=TABLE_PREVIEW_ROWS))
    event = st.dataframe(
        frame,
        hide_index=True,
        width="stretch",
        height=min(len(frame), 12) * 65 + 40,  # about a dozen rows, then it scrolls
        row_height=64,
        column_config={
            "rank": st.column_config.NumberColumn(t("col_rank"), width="small"),
            "preview": st.column_config.ImageColumn(t("col_preview"), width="small"),
            "file": st.column_config.TextColumn(t("col_file"), width="large"),
            "score": st.column_config.ProgressColumn(t("col_score"), min_value=0.0, max_value=1.0, format="%.4f"),
            "size": st.column_config.TextColumn(t("col_size"), help=t("col_size_help")),
            "model_size": st.column_config.TextColumn(t("col_model_size"), help=t("col_model_size_help")),
            "tokens": st.column_config.NumberColumn(t("col_tokens")),
            "retrieval_rank": st.column_config.NumberColumn(t("col_retrieval_rank"), help=t("col_retrieval_rank_help")),
            "similarity": st.column_config.NumberColumn(t("col_similarity"), format="%.3f"),
        },
        on_select="rerun",
        selection_mode="multi-row",
        # a new set of rows starts with no selection
        key=f"{TABLE_KEY}_{hash(tuple(r.index for r in shown))}",
    )
    rows = getattr(getattr(event, "selection", None), "rows", None) or []
    return [shown[i] for i in sorted(rows) if 0 <= i < len(shown)]


# -- downloads --------------------------------------------------------------------------------------
def _downloads(run: Run, results: Sequence[ImageResult]) -> None:
    ranking = run.ranking()  # the command line's export schema: the run's whole settings, how it went
    row = st.container(horizontal=True, gap="small")
    row.download_button(
        t("download_csv"), data=export.to_csv(results), file_name="lychee-ranking.csv", mime="text/csv",
        on_click="ignore", key="download_csv", icon=":material/download:", help=t("downloads_help"),
    )
    row.download_button(
        t("download_json"), data=export.to_json(ranking), file_name="lychee-ranking.json",
        mime="application/json", on_click="ignore", key="download_json", icon=":material/download:",
        help=t("downloads_help"),
    )


def zip_maker(run: Run, chosen: Sequence[ImageResult]) -> Callable[[], BinaryIO]:
    """Builds the ZIP of the chosen images' original files when the button is clicked (not on every
    rerun), into a temporary file: Streamlit reads that once, and lets go of its copy after the
    download (session.release_downloads)."""
    chosen_entries = archive.entries(chosen, lambda r: run.items[r.index].source)

    def build() -> BinaryIO:
        with tempfile.NamedTemporaryFile(prefix="lychee-zip-", suffix=".zip", delete=False) as spool:
            try:
                report = archive.write_zip(spool, chosen_entries)  # unreadable files: listed inside the ZIP
                zip_file = open(spool.name, "rb")  # noqa: SIM115 - Streamlit reads it whole, then drops it
            finally:
                os.unlink(spool.name)  # the open file stays readable; nothing is left on disk
        if report.skipped:
            log.warning("ZIP: %d file(s) left out: %s", len(report.skipped), report.skipped[:5])
        session.release_downloads()
        return zip_file

    return build


def _zip_contents(run: Run, chosen: Sequence[ImageResult]) -> tuple[int, list[tuple[str, str]]]:
    """Bytes the ZIP will hold, and the chosen files that can no longer be read (name, why)."""
    total, unreadable = 0, []
    for result in chosen:
        source = run.items[result.index].source
        if isinstance(source, (bytes, bytearray)):
            total += len(source)
            continue
        try:
            with source.open() as file:  # a server file, checked where it is opened
                total += os.fstat(file.fileno()).st_size
        except ImageError as exc:
            unreadable.append((result.name, str(exc)))
    return total, unreadable


def _zip_button(run: Run, chosen: Sequence[ImageResult], selected: bool) -> list[tuple[str, str]]:
    """The ZIP's button; returns the chosen files it will leave out (unreadable). Served by the app's
    own route, a ZIP is prepared on a first click and then downloaded from disk through a link (the
    server's memory does not grow with it: ui/downloads.py); without that route, Streamlit's download
    button serves it from memory, up to ZIP_LIMIT_BYTES."""
    total, unreadable = _zip_contents(run, chosen)
    label = t("zip_selected" if selected else "zip_shown", n=len(chosen), size=fmt.size(total))
    if downloads.mounted():
        _zip_link(run, chosen, label, total)
        return unreadable
    too_big = total > ZIP_LIMIT_BYTES
    help_text = t("zip_too_big", limit=fmt.size(ZIP_LIMIT_BYTES)) if too_big else t("zip_help")
    st.download_button(
        label, data=zip_maker(run, chosen), file_name=f"lychee-top-{len(chosen)}.zip", mime="application/zip",
        # a rerun after the click: the page checks the files again and says which are gone
        on_click="rerun", key="download_zip", icon=":material/folder_zip:", disabled=too_big or not chosen,
        help=help_text,
    )
    return unreadable


def _zip_link(run: Run, chosen: Sequence[ImageResult], label: str, total: int) -> None:
    """"Prepare", then a link to the prepared file; the link stays while the same images are chosen."""
    key = tuple(r.index for r in chosen)
    ready = st.session_state.get(ZIP_READY_KEY)
    if ready is not None and ready["run"] is run and ready["key"] == key:
        # A plain link with the download attribute: the browser saves the file, in this tab, as it
        # comes (the app's values only, escaped: no file name of the user's is in it).
        st.html(
            f'<a class="lychee-download" href="{html.escape(ready["url"])}" download="{html.escape(ready["name"])}">'
            f'{html.escape(t("zip_download", name=ready["name"], size=fmt.size(ready["bytes"])))}</a>'
        )
        return
    free = shutil.disk_usage(tempfile.gettempdir()).free
    too_big = total > free
    help_text = t("zip_no_room", free=fmt.size(free)) if too_big else t("zip_help")
    st.button(label, key="prepare_zip", icon=":material/folder_zip:", disabled=too_big or not chosen, help=help_text,
              on_click=_prepare_zip, args=(run, list(chosen), key))


def forget_zip() -> None:
    """Delete this session's prepared ZIP (Clear)."""
    st.session_state.pop(ZIP_READY_KEY, None)
    downloads.forget(session.session_id())


def _prepare_zip(run: Run, chosen: list[ImageResult], key: tuple[int, ...]) -> None:
    entries = archive.entries(chosen, lambda r: run.items[r.index].source)
    name = f"lychee-top-{len(chosen)}.zip"
    reports = []
    url, size = downloads.prepare(session.session_id(), name, lambda file: reports.append(archive.write_zip(file, entries)))
    if reports and reports[0].skipped:
        log.warning("ZIP: %d file(s) left out: %s", len(reports[0].skipped), reports[0].skipped[:5])
    st.session_state[ZIP_READY_KEY] = {"run": run, "key": key, "url": url, "name": name, "bytes": size}


def _left_out(unreadable: list[tuple[str, str]]) -> None:
    named = [f"{fmt.md_escape(name)} ({fmt.md_escape(engine_text.text(why))})" for name, why in unreadable[:ZIP_LEFT_OUT_NAMED]]
    names = "; ".join(named) + (" …" if len(unreadable) > ZIP_LEFT_OUT_NAMED else "")
    st.warning(t("zip_left_out", n=len(unreadable), names=names), icon=":material/folder_off:")


def _filtered(scored: Sequence[ImageResult], top_k: int, min_score: float, find: str) -> list[ImageResult]:
    """What the page shows: a file name searched for is found in the whole ranking (each keeps its
    rank); otherwise the ranking cut by the minimum score and the top K."""
    if find:
        needle = find.casefold()
        return [r for r in scored if needle in r.name.casefold()]
    shown = [r for r in scored if r.score >= min_score]
    return shown[: int(top_k)] if top_k else shown


# -- the whole section ------------------------------------------------------------------------------
def show(run: Run, settings: RunSettings | None) -> None:
    """Errors, notes and, when anything is scored, the results of ``run`` (scored under
    ``run.settings``; ``settings`` are the page's now, None while they cannot be used)."""
    results = run.snapshot()
    order = ranked(results)
    scored = [r for r in order if r.status == "scored"]
    errors = [r for r in order if r.status == "error"]
    pending = [r for r in order if r.status == "pending"]

    if run.error is not None:
        kind, message = run.error
        template = "input_error" if kind == "input" else "run_failed"
        st.error(t(template, reason=engine_text.sentence(message)), icon=":material/error:")
    changes = run.settings.changes(settings) if settings is not None else []
    if changes:
        st.warning(
            t("stale", query=fmt.md_escape(run.settings.query or t("no_query_text")),
              changes=", ".join(t(f"chg_{c}") for c in changes)),
            icon=":material/history:",
        )
    if pending and not changes:
        if run.status in (run_state.STOPPED, run_state.FAILED) and run.starts:
            st.info(t("stopped_note", scored=len(results) - len(pending), total=len(results)),
                    icon=":material/pause_circle:")
        elif run.error is None:
            st.info(t("pending_note", n=len(pending)), icon=":material/pending:")
    if not scored and not errors:
        if run.starts:
            st.caption(t("no_results_yet"))
        return

    st.subheader(t("results"))
    if run.is_demo:
        st.warning(t("demo_results"), icon=":material/warning:")
    summary = t("summary", scored=len(scored), elapsed=fmt.seconds(run.elapsed_s), mode=run.mode_used or "–",
                model=fmt.md_escape(run.model_name))
    if errors:
        summary += t("summary_errors", n=len(errors))
    st.caption(summary)
    _downloads(run, results)

    if errors:
        with st.expander(t("errors_title", n=len(errors)), expanded=len(errors) <= 5, icon=":material/broken_image:"):
            st.dataframe(
                pd.DataFrame({"file": [r.name for r in errors], "error": [engine_text.text(r.error) for r in errors]}),
                hide_index=True, width="stretch", key="errors_table",
                column_config={
                    "file": st.column_config.TextColumn(t("col_file")),
                    "error": st.column_config.TextColumn(t("col_error"), width="large"),
                },
            )
    if not scored:
        return

    c0, c1, c2, c3, c4, c5 = st.columns([1.6, 1.1, 1.8, 1.3, 1.4, 1], vertical_alignment="bottom")
    find = c0.text_input(t("find_file"), key="find_file", placeholder=t("find_file_placeholder"),
                         help=t("find_file_help"), persist_state=PERSIST).strip()
    top_k = c1.number_input(t("top_k"), min_value=0, value=0, step=1, key="top_k",
                            help=t("top_k_help"), persist_state=PERSIST)
    min_score = c2.slider(t("min_score"), 0.0, 1.0, 0.0, 0.001, format="%.3f", key="min_score",
                          help=t("filters_help"), persist_state=PERSIST)
    view = choice("segmented", t("show_as"), ("gallery", "table"), store_key="view_as", default="gallery",
                  labels="view_", container=c3, required=True)
    ncols = per_page = None
    if view == "gallery":
        ncols = c4.select_slider(t("columns"), options=list(range(2, 9)), value=5, key="gallery_columns",
                                 persist_state=PERSIST)
        per_page = c5.selectbox(t("per_page"), PER_PAGE_OPTIONS, index=1, key=PER_PAGE_KEY,
                                on_change=_per_page_changed, persist_state=PERSIST)
    shown = _filtered(scored, top_k, min_score, find)
    caption_row = st.container(horizontal=True, vertical_alignment="center", gap="small")
    if find:
        caption_row.caption(t("found_files", n=len(shown), scored=len(scored), text=fmt.md_escape(find)))
    else:
        caption_row.caption(t("showing", shown=len(shown), scored=len(scored)))
    zip_slot = caption_row.empty()
    selected: list[ImageResult] = []
    if not shown:
        st.info(t("nothing_matches"))
    elif view == "table":
        selected = _table(run, shown)
    else:
        _gallery(run, shown, ncols, per_page)
    with zip_slot:
        unreadable = _zip_button(run, selected or shown, bool(selected))
    if unreadable:
        _left_out(unreadable)
    if st.session_state.get(VIEWER_KEY) is not None:
        _viewer(run, shown)
