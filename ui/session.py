"""Browser sessions seen from the server: is this one still connected, and letting go of uploads.

All of it goes through Streamlit's runtime objects, which are not part of its documented API (checked
with Streamlit 1.67; tests/test_browser.py exercises each in a real browser). Where one is missing,
the function does nothing:
- ``Runtime.is_active_session(id)`` is False once the session's websocket has closed (tab closed,
  page reloaded, network gone). A reconnecting browser gets the same session back.
- the uploaded-file manager keeps every upload's bytes until the session is shut down (for a closed
  tab: once server.disconnectedSessionTTL has passed and Streamlit drops the session);
  ``remove_file`` is what Streamlit itself calls when a file is removed from an uploader;
- the media file manager keeps a download generated on click (the ZIP) in memory until two of its
  sweeps (``remove_orphaned_files``, which Streamlit runs after each script run) have seen nobody
  referring to it: the first marks it, the second drops it. ``release_downloads`` runs those sweeps
  itself a little later, so the archive leaves memory without waiting for the next click.
Outside a server (AppTest, bare mode) a session always counts as connected and there is nothing to
release.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import threading
from typing import Callable, Iterable

from streamlit import runtime
from streamlit.runtime.scriptrunner import get_script_run_ctx

log = logging.getLogger("lychee_rerank.app")


def session_id() -> str:
    """The current browser session's id ("" outside a script run)."""
    ctx = get_script_run_ctx()
    return ctx.session_id if ctx is not None else ""


def liveness() -> Callable[[], bool]:
    """A check, callable from any thread, that the current browser session is still connected."""
    ctx = get_script_run_ctx()
    if ctx is None or not runtime.exists():
        return lambda: True
    session_id, instance = ctx.session_id, runtime.get_instance()

    def alive() -> bool:
        try:
            return instance.is_active_session(session_id)
        except Exception:  # a runtime shutting down: let the run be stopped by other means
            return True

    return alive


TRIM_DELAY_S = 3.0  # by then the script runs that still held the released uploads have ended


def release_uploads(file_ids: Iterable[str]) -> None:
    """Drop these uploads of the current session from Streamlit's memory, and hand the memory back
    to the system a moment later, once the page's own references are gone too."""
    ctx = get_script_run_ctx()
    remove = getattr(getattr(ctx, "uploaded_file_mgr", None), "remove_file", None)
    if remove is None:
        return
    for file_id in file_ids:
        remove(ctx.session_id, file_id)
    timer = threading.Timer(TRIM_DELAY_S, trim_memory)
    timer.daemon = True
    timer.start()


# Seconds after a generated download is handed to Streamlit: the first sweep marks it, the second
# drops it. By the first, the browser has long started fetching it (it asks as soon as it has the
# URL, and an answer being sent holds its own reference).
DOWNLOAD_SWEEPS_S = (30.0, 60.0)


def release_downloads() -> None:
    """Have Streamlit let go of a download generated on click (and any other unreferenced one) once
    it has been fetched, and hand the memory back. Callable from any thread; outside a server, a no-op."""
    if not runtime.exists():
        return
    manager = runtime.get_instance().media_file_mgr

    def sweep(last: bool) -> None:
        manager.remove_orphaned_files()
        if last:
            trim_memory()

    for delay in DOWNLOAD_SWEEPS_S:
        timer = threading.Timer(delay, sweep, args=(delay == DOWNLOAD_SWEEPS_S[-1],))
        timer.daemon = True
        timer.start()


def trim_memory() -> None:
    """Hand freed memory back to the system: glibc keeps freed blocks of the sizes uploads have
    (up to 32 MB) in the process, so without this the server would stay at its high-water mark.
    malloc_trim(0) on glibc; elsewhere a no-op."""
    gc.collect()
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        trim = getattr(libc, "malloc_trim", None)
        if trim is not None:
            trim(0)
    except OSError:
        log.debug("malloc_trim is not available")
