"""The ranked results of a run: summary, downloads (CSV, JSON, ZIP of originals), filters, a paged
gallery with a full-size viewer, and a table.

The display filters (top K, minimum score) never score anything again. The gallery pages the
filtered ranking (a pager above and below it); the viewer walks the same ranking with
Previous/Next (buttons, or the arrow keys). The ZIP holds the original files of the images shown,
or of the rows selected in the table, named by rank.
"""

from __future__ import annotations

import logging
import math
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd
import streamlit as st

from lychee_rerank import ImageResult, RunSettings, archive, export
from lychee_rerank.results import ranked

from . import fmt, media
from . import state as run_state
from .i18n import t
from .state import Run
from .widgets import choice

PERSIST = "session"  # filters keep their values across page switches
VIEWER_KEY = "viewer_item"  # index (in run.items) of the image the viewer shows; absent: closed
PAGE_KEY = "gallery_page"  # the gallery's page, shared by the pagers above and below it
TABLE_KEY = "results_table"
PER_PAGE_OPTIONS = (20, 40, 80, 160)
# Previews in the table for the first rows only: a table of 10,000 rows would otherwise decode 10,000
# images before it shows.
TABLE_PREVIEW_ROWS = 300
# A ZIP is built in the server's memory before it is sent; beyond this, fewer images must be chosen.
ZIP_LIMIT_BYTES = 1_000_000_000
log = logging.getLogger("lychee_rerank.app")
STYLE = Path(__file__).with_name("style.css")


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
def _page_chosen(widget_key: str, other_key: str) -> None:
    """Either pager moves both."""
    page = st.session_state.get(widget_key)
    st.session_state[PAGE_KEY] = page
    st.session_state[other_key] = page


def _pager(pages: int, where: str, other: str, layout: str) -> int:
    key, other_key = f"pager_{where}_{layout}", f"pager_{other}_{layout}"
    page = min(max(1, st.session_state.get(PAGE_KEY, 1)), pages)
    st.session_state[PAGE_KEY] = page
    if st.session_state.get(key) != page:
        st.session_state[key] = page
    return st.pagination(pages, key=key, max_visible_pages=9, on_change=_page_chosen, args=(key, other_key))


def _gallery(run: Run, shown: Sequence[ImageResult], ncols: int, per_page: int) -> None:
    pages = max(1, math.ceil(len(shown) / per_page))
    layout = f"{pages}x{per_page}"  # other page counts are other pagers
    page = _pager(pages, "top", "bottom", layout) if pages > 1 else 1
    visible = shown[(page - 1) * per_page: page * per_page]
    for start in range(0, len(visible), ncols):
        columns = st.columns(ncols)
        for column, result in zip(columns, visible[start: start + ncols]):
            item = run.items[result.index]
            with column.container(border=True, key=f"card_{result.index}"):
                st.image(media.card_thumb(item) or media.blank_card(), width="stretch")
                st.markdown(t("card_score", rank=result.rank, score=f"{result.score:.4f}"))
                # The file's name opens the viewer: one line, cut with an ellipsis. Hovering shows it whole
                # (the browser does that for a cut label), with its folder when it has one.
                own_name = media.download_name(item.name)
                st.button(fmt.md_escape(own_name), key=f"view_{result.index}", icon=":material/open_in_full:",
                          type="tertiary", wrap=False, width="stretch", on_click=_open_viewer, args=(result.index,),
                          help=fmt.md_escape(item.name) if own_name != item.name else None)
    if pages > 1:
        _pager(pages, "bottom", "top", layout)


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


def zip_maker(run: Run, chosen: Sequence[ImageResult]) -> Callable[[], bytes]:
    """Builds the ZIP of the chosen images' original files when the button is clicked (not on every
    rerun). It is written to a temporary file first, so only the finished archive sits in memory."""
    chosen_entries = archive.entries(chosen, lambda r: run.items[r.index].source)

    def build() -> bytes:
        with tempfile.TemporaryFile(prefix="lychee-zip-") as spool:
            report = archive.write_zip(spool, chosen_entries)  # unreadable files: listed inside the ZIP
            if report.skipped:
                log.warning("ZIP: %d file(s) left out: %s", len(report.skipped), report.skipped[:5])
            spool.seek(0)
            return spool.read()

    return build


def _zip_button(run: Run, chosen: Sequence[ImageResult], selected: bool) -> None:
    total = sum(run.items[r.index].nbytes for r in chosen)
    too_big = total > ZIP_LIMIT_BYTES
    label = t("zip_selected" if selected else "zip_shown", n=len(chosen), size=fmt.size(total))
    help_text = t("zip_too_big", limit=fmt.size(ZIP_LIMIT_BYTES)) if too_big else t("zip_help")
    st.download_button(
        label, data=zip_maker(run, chosen), file_name=f"lychee-top-{len(chosen)}.zip", mime="application/zip",
        on_click="ignore", key="download_zip", icon=":material/folder_zip:", disabled=too_big or not chosen,
        help=help_text,
    )


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
        st.error(t(template, reason=fmt.sentence(message)), icon=":material/error:")
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

    st.html(STYLE)  # the viewer fits the screen, names on cards stay on one line
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
                pd.DataFrame({"file": [r.name for r in errors], "error": [r.error for r in errors]}),
                hide_index=True, width="stretch", key="errors_table",
                column_config={
                    "file": st.column_config.TextColumn(t("col_file")),
                    "error": st.column_config.TextColumn(t("col_error"), width="large"),
                },
            )
    if not scored:
        return

    c1, c2, c3, c4, c5 = st.columns([1.3, 2, 1.3, 1.4, 1], vertical_alignment="bottom")
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
        per_page = c5.selectbox(t("per_page"), PER_PAGE_OPTIONS, index=1, key="gallery_per_page",
                                persist_state=PERSIST)
    shown = [r for r in scored if r.score >= min_score]
    if top_k:
        shown = shown[: int(top_k)]
    caption_row = st.container(horizontal=True, vertical_alignment="center", gap="small")
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
        _zip_button(run, selected or shown, bool(selected))
    if st.session_state.get(VIEWER_KEY) is not None:
        _viewer(run, shown)
