"""Rerank page: query (+ optional query image), images, Rank; live progress; the ranked results.

How a run behaves:
- it runs in a background thread (ui/state.Run), so clicks, filter changes and page switches never
  interrupt it; a fragment polls its progress and the memory readout every 2 seconds; while another
  run holds the model it shows its place in the queue;
- Stop sets an event the engine checks between forwards; every image finished so far is kept; a run
  whose browser tab is closed stops by itself within seconds;
- Resume ranks only the images not scored yet and merges them by their original position;
- results belong to a query: when the query, query image, instruction, resolution or model change,
  the old results stay on screen under a banner naming the previous query, Resume is withheld, and
  Rank scores the current query. Adding or removing files keeps the scores of the files still there
  (matched by content) and leaves the new ones for Resume;
- a query image is checked when it is uploaded: one that cannot be used is named in one sentence and
  blocks Rank, and the results on screen stay as they are.

Images come from uploads (files or a folder; each held in memory once, released by Clear) or, when
$LYCHEE_DATA_DIR is set, from a folder on the server (read from disk, never uploaded: ui/sources.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from lychee_rerank import DEFAULT_INSTRUCTION, DEMO_NAME, PREPROCESS_MODES, InputError, ModelSettings, QueryImage as QueryPicture, RunSettings
from lychee_rerank import feature_cache
from ui import allowlist, engine_text, fmt, i18n, index_panel, media, results, session, sources
from ui import model as model_ui
from ui import state as run_state
from ui.i18n import t
from ui.state import Item, Run
from ui.widgets import choice, memory_readout

RUN_KEY = run_state.SESSION_KEY  # the session's Run
IMAGES_KEY = "image_set"  # {"ids": upload file ids, "items": [Item]}: survives page switches
SERVER_KEY = "server_images"  # {"text": folder as chosen, "found": ServerImages | None, "error": FolderError | None}
SERVER_FOLDER_KEY = "server_folder"  # the folder picker (a folder offered, or a path typed)
FOLDER_LIST_TTL_S = 30  # how long the offered folders are reused before the data folder is listed again
QUERY_IMAGE_KEY = "query_image"  # QueryImage | None
UPLOADER_GENERATION_KEY = "uploader_generation"  # bumped to empty the uploaders (Clear)
ACTION_KEY = "pending_action"  # set by button callbacks, handled once in the script
TOKEN_PRESETS = (256, 640, 1280)
PIXELS_PER_TOKEN = 28 * 28
# Every 2 s, not 1: each tick reruns the panel and redraws the page, about 5% of a run's time on a
# 2-core server that also runs the browser (docs/benchmarks.md, the app against the command line).
LIVE_REFRESH_S = 2.0
PERSIST = "session"  # inputs keep their values across page switches
SKIPPED_SHOWN = 500  # rows of the skipped-files table
NOT_RETRIEVED_KEY = "not_retrieved"  # search then rerank: the folder's images left out of the top K


@dataclass(frozen=True)
class QueryImage:
    """The uploaded query image, checked once when it arrives: a preview, or why it cannot be used."""

    item: Item
    preview: bytes | None
    error: str | None


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


def _uploader_key(name: str) -> str:
    generation = st.session_state.get(UPLOADER_GENERATION_KEY, 0)
    return f"{name}_{generation}" if generation else name


def _release_uploads() -> None:
    """Forget the uploaded images: the session's set, the uploaders' files, and Streamlit's copies."""
    current = st.session_state.get(IMAGES_KEY)
    st.session_state[IMAGES_KEY] = None
    st.session_state[UPLOADER_GENERATION_KEY] = st.session_state.get(UPLOADER_GENERATION_KEY, 0) + 1
    if current:
        session.release_uploads(current["ids"])


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


def _sync_query_image(uploaded) -> QueryImage | None:
    if uploaded is not None:
        current: QueryImage | None = st.session_state.get(QUERY_IMAGE_KEY)
        digest, name = media.upload_digest(uploaded), media.upload_name(uploaded.name)
        if current is None or current.item.digest != digest or current.item.name != name:
            preview, error = media.query_image_preview(uploaded.getvalue())
            st.session_state[QUERY_IMAGE_KEY] = QueryImage(Item(name, digest, uploaded.getvalue()), preview, error)
    return st.session_state.get(QUERY_IMAGE_KEY)


def _query_inputs() -> QueryImage | None:
    st.text_input(t("query"), key="query", placeholder=t("query_placeholder"), persist_state=PERSIST)
    left, right = st.columns([4, 1], vertical_alignment="top")
    with left:
        uploaded = st.file_uploader(
            t("query_image"), type=media.UPLOAD_TYPES, key="query_image_upload",
            on_change=_uploader_changed, args=("query_image_upload", QUERY_IMAGE_KEY),
        )
        query_image = _sync_query_image(uploaded)
        if query_image is not None and uploaded is None:
            st.caption(t("query_image_kept", name=fmt.md_escape(query_image.item.name)))
        if query_image is not None and query_image.error:
            st.error(t("query_image_bad", reason=engine_text.sentence(query_image.error)), icon=":material/broken_image:")
    if query_image is not None and query_image.preview is not None:
        right.image(query_image.preview, caption=t("query_image_preview"), width="stretch")
    return query_image


def _upload_inputs(folder: bool) -> list[Item]:
    if folder:
        widget_key = _uploader_key("folder_upload")
        files = st.file_uploader(
            t("upload_folder"), type=media.UPLOAD_TYPES, accept_multiple_files="directory",
            key=widget_key, on_change=_uploader_changed, args=(widget_key, IMAGES_KEY),
        )
    else:
        widget_key = _uploader_key("files_upload")
        files = st.file_uploader(
            t("upload_files"), type=media.UPLOAD_TYPES, accept_multiple_files=True,
            key=widget_key, on_change=_uploader_changed, args=(widget_key, IMAGES_KEY),
        )
    items = _sync_images(files or [])
    if items:
        total = fmt.size(sum(it.nbytes for it in items))
        if files:
            st.caption(t("n_selected", n=len(items), size=total))
        else:
            left, right = st.columns([3, 1], vertical_alignment="center")
            left.caption(t("n_kept", n=len(items), size=total))
            right.button(t("forget_files"), on_click=_release_uploads, key="forget_images")
    return items


@st.cache_data(ttl=FOLDER_LIST_TTL_S, show_spinner=False, max_entries=4)
def _folder_choices(root: str) -> list[sources.FolderChoice]:
    return sources.folders(Path(root))


def _scan_server_folder(force: bool = False) -> None:
    """(Re)scan the chosen folder when it changed, or when ``force`` (then the offered list too)."""
    text = (st.session_state.get(SERVER_FOLDER_KEY) or "").strip()
    state = st.session_state.get(SERVER_KEY)
    if not force and state is not None and state["text"] == text:
        return
    if force:
        _folder_choices.clear()
    found, error = None, None
    root = sources.data_dir()
    if text and root is not None:
        try:
            found = sources.scan(sources.resolve_folder(text, root), root)
        except sources.FolderError as exc:
            error = exc
    st.session_state[SERVER_KEY] = {"text": text, "found": found, "error": error}


def _folder_label(choices: dict[str, sources.FolderChoice]):
    """How the picker shows a folder: its path and the images under it (a typed path as typed)."""
    say = i18n.bound()  # format_func may run outside the script, where the language is out of reach

    def label(path: str) -> str:
        choice = choices.get(path)
        if choice is None:
            return path
        shown = say("folder_root") if path == "." else path
        return say("folder_option" if choice.complete else "folder_option_more", path=shown, n=f"{choice.images:,}")

    return label


def _folder_picker(root: Path) -> list[sources.FolderChoice]:
    """The folders of the data folder to choose from; a path can be typed too (Enter adds it)."""
    choices = _folder_choices(str(root))
    by_path = {c.path: c for c in choices}
    current = st.session_state.get(SERVER_FOLDER_KEY)
    options = list(by_path) + ([current] if current and current not in by_path else [])
    st.selectbox(
        t("server_folder"), options, index=None, key=SERVER_FOLDER_KEY, accept_new_options=True,
        format_func=_folder_label(by_path), placeholder=t("server_folder_placeholder"),
        help=t("server_folder_help", root=root), persist_state=PERSIST,
    )
    return choices


def _folder_problem(error: sources.FolderError | None, found, choices: list[sources.FolderChoice]) -> str | None:
    """Why the chosen folder gives no images, in one or two sentences (with the nearest names), or None."""
    if error is not None:
        values = dict(error.values)
        if "reason" in values:
            values["reason"] = engine_text.text(values["reason"])
        message = t(error.key, **{k: fmt.md_escape(v) for k, v in values.items()})
        typed = error.values.get("folder") if error.key == "folder_missing" else None
    elif found is not None and not found.items:
        message, typed = t("server_empty", folder=fmt.md_escape(found.folder)), found.folder
    else:
        return None
    nearest = sources.nearest(typed, choices) if typed else []
    if nearest:
        message += " " + t("did_you_mean", names=", ".join(fmt.md_escape(n) for n in nearest))
    return message


def _server_inputs(root: Path) -> tuple[list[Item], int | None]:
    choices = _folder_picker(root)
    _scan_server_folder()
    state = st.session_state[SERVER_KEY]
    found: sources.ServerImages | None = state["found"]
    problem = _folder_problem(state["error"], found, choices)
    if problem:
        st.error(problem, icon=":material/folder_off:")
        if found is None:
            return [], None
    if found is None:
        st.caption(t("server_folder_hint", root=fmt.md_escape(root)))
        return [], None
    left, right = st.columns([3, 1], vertical_alignment="center")
    if found.items:
        left.caption(t("server_found", n=len(found.items), folder=fmt.md_escape(found.folder),
                       size=fmt.size(found.total_bytes)))
    right.button(t("rescan"), key="rescan", icon=":material/refresh:", on_click=_scan_server_folder, args=(True,))
    if found.skipped:
        with st.expander(t("server_skipped", n=len(found.skipped)), icon=":material/block:"):
            shown = found.skipped[:SKIPPED_SHOWN]
            st.dataframe({t("col_file"): [p for p, _ in shown], t("col_reason"): [engine_text.text(r) for _, r in shown]},
                         hide_index=True, width="stretch", key="skipped_table")
            if len(found.skipped) > SKIPPED_SHOWN:
                st.caption(t("server_skipped_more", n=len(found.skipped) - SKIPPED_SHOWN))
    k = index_panel.panel(root, found.folder, list(found.items)) if found.items else None  # search then rerank
    return list(found.items), k


def _inputs() -> tuple[QueryImage | None, list[Item], str, int | None]:
    query_image = _query_inputs()
    with st.expander(t("advanced")):
        st.text_area(
            t("instruction"), value=DEFAULT_INSTRUCTION, key="instruction", help=t("instruction_help"),
            height=80, persist_state=PERSIST,
        )
        choice("radio", t("resolution"), TOKEN_PRESETS, store_key="tokens", default=TOKEN_PRESETS[-1],
               labels="res_", horizontal=True, help=t("resolution_help"))
        choice("radio", t("mode"), ("auto", "sequential"), store_key="mode", default="auto", labels="mode_",
               horizontal=True)
        choice("radio", t("preprocess"), PREPROCESS_MODES, store_key="preprocess", default="exact", labels="pre_",
               horizontal=True, help=t("preprocess_help"))

    root = sources.data_dir()
    options = ("files", "folder", "server") if root is not None else ("files", "folder")
    source = choice("radio", t("upload_source"), options, store_key="upload_source", default="files",
                    labels="src_", horizontal=True)
    items, k = _server_inputs(root) if source == "server" else (_upload_inputs(folder=source == "folder"), None)
    return query_image, items, source, k


def _current_settings(query_image: QueryImage | None, outcome) -> tuple[RunSettings | None, str | None]:
    """The page's RunSettings (the one object the engine gets and the downloads record), or the
    sentence saying why the inputs cannot be used (e.g. a control token in the query)."""
    tokens = st.session_state.get("tokens") or TOKEN_PRESETS[-1]
    picture = None
    if query_image is not None and query_image.error is None:
        picture = QueryPicture(query_image.item.source, query_image.item.name)
    if not (st.session_state.get("query") or "").strip() and picture is None:
        return None, None  # nothing typed yet: the page asks for a query in its own words
    try:
        return RunSettings.build(
            st.session_state.get("query") or "",
            # the loaded reranker's own settings: a run can only ever be for the model that scores it
            model=outcome.reranker.model_settings if outcome.reranker else ModelSettings(outcome.name, outcome.dtype, outcome.quantize),
            instruction=st.session_state.get("instruction"),
            query_image=picture,
            max_pixels=int(tokens) * PIXELS_PER_TOKEN,
            preprocess=st.session_state.get("preprocess") or "exact",
            mode=st.session_state.get("mode") or "auto",
            cache_dir=_feature_cache_dir(),
        ), None
    except InputError as exc:
        return None, engine_text.sentence(str(exc))


def _feature_cache_dir() -> str | None:
    """The vision-feature cache, on by default (a second question about the same images skips their
    decoding and vision tower); off when LYCHEE_FEATURE_CACHE=off or its folder cannot be written."""
    folder = feature_cache.default_cache_dir()
    return None if folder is None or feature_cache.cache_dir_problem(folder) else folder


def _same_files(run: Run, items: list[Item]) -> bool:
    return [(i.name, i.digest) for i in run.items] == [(i.name, i.digest) for i in items]


# -- live progress ------------------------------------------------------------------------------
@st.fragment(run_every=LIVE_REFRESH_S)
def _live_panel() -> None:
    run: Run | None = st.session_state.get(RUN_KEY)
    if run is not None and run.running and run.progress is not None and (run.progress.eta_s or 0) < LIVE_REFRESH_S:
        run.wait(LIVE_REFRESH_S)  # about to end: show the results the moment it does, not at the next tick
    if run is None or not run.running:
        st.rerun()  # finished: redraw the whole page with the results
    with run.lock:
        event, waiting, place, stopping = run.progress, run.waiting, run.queue_position, run.stop_event.is_set()
        total, already, todo = len(run.items), run.already_scored, run.todo
        best = max((r for r in run.results if r.status == "scored"), key=lambda r: r.score, default=None)
    with st.container(border=True, key="live_panel"):  # kept in view while it runs: ui/style.css
        st.markdown(f"**{t('run_header', total=total)}**")
        if already:
            st.caption(t("resuming", done=already, todo=todo))
        done = already + (event.done if event else 0)
        if waiting:
            text = t("waiting_place", n=place) if place else t("waiting")
        elif event is None:
            text = t("starting")
        else:
            text = fmt.progress(event, done, total)
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


# -- page ---------------------------------------------------------------------------------------
def _start(run: Run, reranker, settings: RunSettings) -> None:
    """Start (or resume) the run; its thumbnails are made from the engine's own decoding."""
    run.start(reranker, settings=settings, session_alive=session.liveness(), on_picture=media.keep_picture)


def _demo_banner() -> None:
    """The demo model's warning, offering exactly the models this server's allow-list allows."""
    others = [name for name in allowlist.allowed_models() if name != DEMO_NAME]
    if others:
        text = t("demo_banner_load", models=t("models_or").join(fmt.md_escape(name) for name in others))
    else:
        text = t("demo_banner_only", env=allowlist.MODELS_ENV)
    st.warning(text, icon=":material/warning:")


def main() -> None:
    action = st.session_state.pop(ACTION_KEY, None)
    st.title(t("rerank_title"))
    st.caption(t("rerank_intro"))

    outcome = model_ui.active()
    reranker = outcome.reranker
    if reranker is None:
        model_ui.failure_panel(outcome)
    elif reranker.info.is_demo:
        _demo_banner()

    if action == "rank" and st.session_state.get("upload_source") == "server":
        _scan_server_folder(force=True)  # rank what is in the folder now
    query_image, items, source, retrieve_k = _inputs()
    settings, settings_error = _current_settings(query_image, outcome)
    run: Run | None = st.session_state.get(RUN_KEY)
    same_scores = run is not None and settings is not None and not settings.changes(run.settings)

    # Same query, other files: keep the scores of the files still there, the new ones wait for Resume.
    # (Not while searching the index: a run then holds the top K only, by design.)
    if (run is not None and not run.running and items and same_scores and retrieve_k is None
            and not _same_files(run, items)):
        run = run.rebase(items)
        st.session_state[RUN_KEY] = run

    notice = None
    query_image_usable = query_image is None or query_image.error is None
    if action == "rank" and not (run is not None and run.running):
        if reranker is None:
            notice = t("need_model")
        elif not items:
            notice = t("need_folder") if source == "server" else t("need_files")
        elif not query_image_usable:
            notice = t("need_good_query_image")
        elif settings is None:
            notice = settings_error or t("need_query")
        else:
            first_stage = None
            if retrieve_k is not None:  # search the index, rerank only the top K
                state = st.session_state[SERVER_KEY]
                items, first_stage, left_out = index_panel.top_k(
                    sources.data_dir(), state["found"].folder, items, settings, retrieve_k)
                st.session_state[NOT_RETRIEVED_KEY] = left_out
            else:
                st.session_state.pop(NOT_RETRIEVED_KEY, None)
            run = Run(settings, items, model_name=reranker.info.name, is_demo=reranker.info.is_demo,
                      quantization=reranker.info.quantization, results=first_stage)
            st.session_state[RUN_KEY] = run
            _start(run, reranker, settings)
    elif action == "resume" and run is not None and not run.running and reranker is not None:
        if same_scores and run.pending() and query_image_usable:
            _start(run, reranker, settings)
    elif action == "clear" and run is not None and not run.running:
        st.session_state.pop(RUN_KEY, None)
        st.session_state.pop(NOT_RETRIEVED_KEY, None)
        st.session_state.pop(results.VIEWER_KEY, None)
        results.forget_zip()
        run = None
        if source != "server":
            _release_uploads()
            st.rerun()  # redraw the emptied uploaders

    running = run is not None and run.running
    can_resume = (run is not None and not running and reranker is not None and same_scores and run.pending()
                  and query_image_usable and not (run.error and run.error[0] == "input"))
    row = st.container(horizontal=True, gap="small")
    row.button(
        t("rank"), type="primary", on_click=_request, args=("rank",), key="rank_button",
        disabled=running or reranker is None, help=t("rank_help"), icon=":material/sort:",
    )
    if can_resume:
        row.button(t("resume", n=len(run.pending())), on_click=_request, args=("resume",), key="resume_button",
                   icon=":material/play_arrow:")
    if run is not None and not running:
        row.button(t("clear_server") if source == "server" else t("clear"), on_click=_request, args=("clear",),
                   key="clear_button", icon=":material/delete:",
                   help=t("clear_server_help") if source == "server" else t("clear_help"))
    if notice:
        st.warning(notice, icon=":material/info:")
    if run is not None and st.session_state.get(NOT_RETRIEVED_KEY):
        st.caption(t("not_retrieved", k=len(run.items), n=st.session_state[NOT_RETRIEVED_KEY]))

    if running:
        _live_panel()
    elif run is not None:
        results.show(run, settings)


main()
