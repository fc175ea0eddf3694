"""Rerank page: query (+ optional query image), images, Rank; live progress; ranked gallery, table, downloads.

How a run behaves:
- it runs in a background thread (ui/state.Run), so clicks, filter changes and page switches never
  interrupt it; a fragment polls its progress and the memory readout once a second;
- Stop sets an event the engine checks between forwards; every image finished so far is kept;
- Resume ranks only the images not scored yet and merges them by their original position;
- results belong to a query: when the query, query image, instruction, resolution or model change,
  the old results stay on screen under a banner naming the previous query, Resume is withheld, and
  Rank scores the current query. Adding or removing files keeps the scores of the files still there
  (matched by content) and leaves the new ones for Resume.
"""

from __future__ import annotations

import math

import pandas as pd
import streamlit as st

from lychee_rerank import DEFAULT_INSTRUCTION, export
from lychee_rerank.results import ranked
from ui import fmt, media
from ui import model as model_ui
from ui import state as run_state
from ui.i18n import t
from ui.state import Item, QueryKey, Run
from ui.widgets import choice, memory_readout

RUN_KEY = run_state.SESSION_KEY  # the session's Run
IMAGES_KEY = "image_set"  # {"ids": upload file ids, "items": [Item]}: survives page switches
QUERY_IMAGE_KEY = "query_image_item"  # Item | None
ACTION_KEY = "pending_action"  # set by button callbacks, handled once in the script
TOKEN_PRESETS = (256, 640, 1280)
PIXELS_PER_TOKEN = 28 * 28
LIVE_REFRESH_S = 1.0
PERSIST = "session"  # inputs keep their values across page switches


# -- callbacks (run before the script) ------------------------------------------------------------
def _request(action: str) -> None:
    st.session_state[ACTION_KEY] = action


def _stop_run() -> None:
    run = st.session_state.get(RUN_KEY)
    if run is not None:
        run.stop()


def _uploader_changed(widget_key: str, set_key: str) -> None:
    """An uploader emptied by the user forgets its images (a page switch empties it without a callback)."""
    if not st.session_state.get(widget_key):
        st.session_state[set_key] = None


def _forget_images() -> None:
    st.session_state[IMAGES_KEY] = None


# -- inputs -------------------------------------------------------------------------------------
def _sync_images(files) -> list[Item]:
    """The session's image set: the uploader's files, or the last ones it held before a page switch."""
    if files:
        ids = tuple(f.file_id for f in files)
        current = st.session_state.get(IMAGES_KEY)
        if not current or current["ids"] != ids:
            st.session_state[IMAGES_KEY] = {"ids": ids, "items": media.items_from_uploads(files)}
            media.forget_digests(set(ids))
    current = st.session_state.get(IMAGES_KEY)
    return list(current["items"]) if current else []


def _sync_query_image(uploaded) -> Item | None:
    if uploaded is not None:
        item = st.session_state.get(QUERY_IMAGE_KEY)
        digest = media.upload_digest(uploaded)
        if item is None or item.digest != digest or item.name != uploaded.name:
            st.session_state[QUERY_IMAGE_KEY] = Item(uploaded.name, digest, uploaded.getvalue())
    return st.session_state.get(QUERY_IMAGE_KEY)


def _inputs():
    st.text_input(
        t("query"), key="query", placeholder=t("query_placeholder"), persist_state=PERSIST
    )
    uploaded_query_image = st.file_uploader(
        t("query_image"),
        type=media.UPLOAD_TYPES,
        key="query_image_upload",
        on_change=_uploader_changed,
        args=("query_image_upload", QUERY_IMAGE_KEY),
    )
    query_item = _sync_query_image(uploaded_query_image)
    if query_item is not None and uploaded_query_image is None:
        st.caption(t("query_image_kept", name=fmt.md_escape(query_item.name)))

    with st.expander(t("advanced")):
        st.text_area(
            t("instruction"), value=DEFAULT_INSTRUCTION, key="instruction", help=t("instruction_help"),
            height=80, persist_state=PERSIST,
        )
        choice("radio", t("resolution"), TOKEN_PRESETS, store_key="tokens", default=TOKEN_PRESETS[-1],
               labels="res_", horizontal=True, help=t("resolution_help"))
        choice("radio", t("mode"), ("auto", "sequential"), store_key="mode", default="auto", labels="mode_",
               horizontal=True)

    source = choice("radio", t("upload_source"), ("files", "folder"), store_key="upload_source", default="files",
                    labels="src_", horizontal=True)
    if source == "folder":
        files = st.file_uploader(
            t("upload_folder"), type=media.UPLOAD_TYPES, accept_multiple_files="directory",
            key="folder_upload", on_change=_uploader_changed, args=("folder_upload", IMAGES_KEY),
        )
    else:
        files = st.file_uploader(
            t("upload_files"), type=media.UPLOAD_TYPES, accept_multiple_files=True,
            key="files_upload", on_change=_uploader_changed, args=("files_upload", IMAGES_KEY),
        )
    items = _sync_images(files or [])
    if items:
        total = fmt.size(sum(len(it.data) for it in items))
        if files:
            st.caption(t("n_selected", n=len(items), size=total))
        else:
            left, right = st.columns([3, 1], vertical_alignment="center")
            left.caption(t("n_kept", n=len(items), size=total))
            right.button(t("forget_files"), on_click=_forget_images, key="forget_images")
    return query_item, items


def _current_key(query_item: Item | None, model_name: str, dtype: str) -> QueryKey:
    instruction = (st.session_state.get("instruction") or "").strip() or DEFAULT_INSTRUCTION
    tokens = st.session_state.get("tokens") or TOKEN_PRESETS[-1]
    return QueryKey(
        query=(st.session_state.get("query") or "").strip(),
        query_image=query_item.digest if query_item else None,
        instruction=instruction,
        max_pixels=int(tokens) * PIXELS_PER_TOKEN,
        model=f"{model_name}|{dtype}",
    )


def _same_files(run: Run, items: list[Item]) -> bool:
    return [(i.name, i.digest) for i in run.items] == [(i.name, i.digest) for i in items]


# -- live progress ------------------------------------------------------------------------------
@st.fragment(run_every=LIVE_REFRESH_S)
def _live_panel() -> None:
    run: Run | None = st.session_state.get(RUN_KEY)
    if run is None or not run.running:
        st.rerun()  # finished: redraw the whole page with the results
    run.touch()
    with run.lock:
        event, waiting, stopping = run.progress, run.waiting, run.stop_event.is_set()
        total, already, todo = len(run.items), run.already_scored, run.todo
        best = max((r for r in run.results if r.status == "scored"), key=lambda r: r.score, default=None)
    with st.container(border=True):
        st.markdown(f"**{t('run_header', total=total)}**")
        if already:
            st.caption(t("resuming", done=already, todo=todo))
        done = already + (event.done if event else 0)
        if waiting:
            text = t("waiting")
        elif event is None:
            text = t("starting")
        else:
            text = event.describe()
        if stopping:
            text += " · " + t("stopping")
        bar, button = st.columns([5, 1], vertical_alignment="bottom")
        bar.progress(min(1.0, done / total) if total else 0.0, text=text)
        button.button(
            t("stop"), on_click=_stop_run, key="stop_button", icon=":material/stop_circle:",
            disabled=stopping, width="stretch",
        )
        if best is not None:
            st.caption(t("best_so_far", name=fmt.md_escape(best.name), score=f"{best.score:.4f}"))
        memory_readout()


# -- results ------------------------------------------------------------------------------------
def _show_full_view(run: Run, index: int) -> None:
    item = run.items[index]
    result = run.snapshot()[index]

    @st.dialog(t("full_view"), width="large")
    def dialog() -> None:
        picture = media.full_view(item)
        if picture is None:
            st.warning(t("cannot_display"))
        else:
            st.image(picture, width="content")  # natural size, shrunk to fit: small images stay sharp
        st.markdown(f"**{fmt.md_escape(item.name)}**")
        rank = next((r.rank for r in ranked(run.snapshot()) if r.index == index), None)
        details = []
        if rank is not None:
            details.append(f"#{rank}")
        if result.score is not None:
            details.append(f"{t('col_score')} {result.score:.4f}")
        if result.width:
            details.append(f"{result.width}×{result.height} px")
        if result.visual_tokens:
            details.append(t("tokens_unit", n=result.visual_tokens))
        st.caption(" · ".join(details) + "  \n" + t("full_view_note", px=media.FULL_VIEW_SIDE))
        st.download_button(
            t("download_original"), data=item.data, file_name=media.download_name(item.name),
            mime=media.mime_type(item.name), on_click="ignore", key=f"original_{index}",
        )

    dialog()


def _gallery(run: Run, shown, ncols: int, per_page: int) -> None:
    pages = max(1, math.ceil(len(shown) / per_page))
    page = 1
    if pages > 1:
        page = st.pagination(pages, key=f"gallery_page_{pages}_{per_page}", max_visible_pages=9)
    visible = shown[(page - 1) * per_page: page * per_page]
    for start in range(0, len(visible), ncols):
        columns = st.columns(ncols)
        for column, result in zip(columns, visible[start: start + ncols]):
            item = run.items[result.index]
            with column.container(border=True):
                picture = media.card_thumb(item)
                if picture is not None:
                    st.image(picture, width="stretch")
                st.markdown(t("card_score", rank=result.rank, score=f"{result.score:.4f}"))
                st.caption(fmt.md_escape(item.name))
                if st.button(t("view"), key=f"view_{result.index}", icon=":material/open_in_full:",
                             width="stretch"):
                    _show_full_view(run, result.index)


def _table(run: Run, shown) -> None:
    frame = pd.DataFrame(
        {
            "rank": [r.rank for r in shown],
            "preview": [media.table_thumb_uri(run.items[r.index]) for r in shown],
            "file": [r.name for r in shown],
            "score": [r.score for r in shown],
            "size": [f"{r.width}×{r.height}" if r.width else "" for r in shown],
            "tokens": [r.visual_tokens for r in shown],
        }
    )
    st.dataframe(
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
            "size": st.column_config.TextColumn(t("col_size")),
            "tokens": st.column_config.NumberColumn(t("col_tokens")),
        },
        key="results_table",
    )


def _downloads(run: Run, results) -> None:
    metadata = {
        "query": run.key.query,
        "query_image": run.key.query_image is not None,
        "instruction": run.key.instruction,
        "max_pixels": run.key.max_pixels,
        "model": run.model_name,
        "is_demo": run.is_demo,
        "mode": run.mode_used,
        "elapsed_s": round(run.elapsed_s, 3),
    }
    if run.is_demo:
        metadata["note"] = "demo model: random weights, the scores mean nothing"
    row = st.container(horizontal=True, gap="small")
    row.download_button(
        t("download_csv"), data=export.to_csv(results), file_name="lychee-ranking.csv", mime="text/csv",
        on_click="ignore", key="download_csv", icon=":material/download:", help=t("downloads_help"),
    )
    row.download_button(
        t("download_json"), data=export.to_json(results, **metadata), file_name="lychee-ranking.json",
        mime="application/json", on_click="ignore", key="download_json", icon=":material/download:",
        help=t("downloads_help"),
    )


def _results(run: Run, key: QueryKey) -> None:
    results = run.snapshot()
    order = ranked(results)
    scored = [r for r in order if r.status == "scored"]
    errors = [r for r in order if r.status == "error"]
    pending = [r for r in order if r.status == "pending"]

    if run.error is not None:
        kind, message = run.error
        template = "input_error" if kind == "input" else "run_failed"
        st.error(t(template, reason=fmt.sentence(message)), icon=":material/error:")
    changes = run.key.changes(key)
    if changes:
        st.warning(
            t("stale", query=fmt.md_escape(run.key.query or t("no_query_text")),
              changes=", ".join(t(f"chg_{c}") for c in changes)),
            icon=":material/history:",
        )
    if pending and not changes:
        if run.status == run_state.STOPPED:
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
                pd.DataFrame({"file": [r.name for r in errors], "error": [r.error for r in errors]}),
                hide_index=True, width="stretch", key="errors_table",
                column_config={
                    "file": st.column_config.TextColumn(t("col_file")),
                    "error": st.column_config.TextColumn(t("col_error"), width="large"),
                },
            )
    if not scored:
        return

    c1, c2, c3, c4, c5 = st.columns([1.1, 2, 1.3, 1.4, 1], vertical_alignment="bottom")
    top_k = c1.number_input(t("top_k"), min_value=0, value=0, step=1, key="top_k",
                            help=t("filters_help"), persist_state=PERSIST)
    min_score = c2.slider(t("min_score"), 0.0, 1.0, 0.0, 0.001, format="%.3f", key="min_score",
                          help=t("filters_help"), persist_state=PERSIST)
    view = choice("segmented", t("show_as"), ("gallery", "table"), store_key="view_as", default="gallery",
                  labels="view_", container=c3, required=True)
    ncols = per_page = None
    if view == "gallery":
        ncols = c4.select_slider(t("columns"), options=list(range(2, 9)), value=5, key="gallery_columns",
                                 persist_state=PERSIST)
        per_page = c5.selectbox(t("per_page"), (20, 40, 80, 160), index=1, key="gallery_per_page",
                                persist_state=PERSIST)
    shown = [r for r in scored if r.score >= min_score]
    if top_k:
        shown = shown[: int(top_k)]
    st.caption(t("showing", shown=len(shown), scored=len(scored)))
    if not shown:
        st.info(t("nothing_matches"))
    elif view == "table":
        _table(run, shown)
    else:
        _gallery(run, shown, ncols, per_page)


# -- page ---------------------------------------------------------------------------------------
def main() -> None:
    action = st.session_state.pop(ACTION_KEY, None)
    st.title(t("rerank_title"))
    st.caption(t("rerank_intro"))

    outcome = model_ui.active()
    reranker = outcome.reranker
    if reranker is None:
        model_ui.failure_panel(outcome)
    elif reranker.info.is_demo:
        st.warning(t("demo_banner"), icon=":material/warning:")

    query_item, items = _inputs()
    key = _current_key(query_item, outcome.name, f"{outcome.dtype}|{outcome.quantize}")
    run: Run | None = st.session_state.get(RUN_KEY)
    if run is not None:
        run.touch()

    # Same query, other files: keep the scores of the files still there, the new ones wait for Resume.
    if run is not None and not run.running and items and run.key == key and not _same_files(run, items):
        run = run.rebase(items)
        st.session_state[RUN_KEY] = run

    notice = None
    if action == "rank" and not (run is not None and run.running):
        if reranker is None:
            notice = t("need_model")
        elif not items:
            notice = t("need_files")
        elif not key.query and key.query_image is None:
            notice = t("need_query")
        else:
            run = Run(
                key, items, query_image=query_item.data if query_item else None,
                model_name=reranker.info.name, is_demo=reranker.info.is_demo,
            )
            st.session_state[RUN_KEY] = run
            run.start(reranker, mode=st.session_state.get("mode") or "auto")
            media.prepare_thumbnails(run.items, run.stop_event)
    elif action == "resume" and run is not None and not run.running and reranker is not None:
        if run.key == key and run.pending():
            todo = [run.items[i] for i in run.pending()]
            run.start(reranker, mode=st.session_state.get("mode") or "auto")
            media.prepare_thumbnails(todo, run.stop_event)
    elif action == "clear" and run is not None and not run.running:
        st.session_state.pop(RUN_KEY, None)
        run = None

    running = run is not None and run.running
    can_resume = run is not None and not running and reranker is not None and run.key == key and run.pending()
    row = st.container(horizontal=True, gap="small")
    row.button(
        t("rank"), type="primary", on_click=_request, args=("rank",), key="rank_button",
        disabled=running or reranker is None, help=t("rank_help"), icon=":material/sort:",
    )
    if can_resume:
        row.button(t("resume", n=len(run.pending())), on_click=_request, args=("resume",), key="resume_button",
                   icon=":material/play_arrow:")
    if run is not None and not running:
        row.button(t("clear"), on_click=_request, args=("clear",), key="clear_button", icon=":material/delete:")
    if notice:
        st.warning(notice, icon=":material/info:")

    if running:
        _live_panel()
    elif run is not None:
        _results(run, key)


main()
