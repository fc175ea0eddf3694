"""The browser session behind the current script run, seen from the server: is it still connected,
and letting go of the files it uploaded.

Both go through Streamlit's runtime objects, which are not part of its documented API (checked with
Streamlit 1.67; tests/test_browser.py exercises both in a real browser):
- ``Runtime.is_active_session(id)`` is False once the session's websocket has closed (tab closed,
  page reloaded, network gone). A reconnecting browser gets the same session back.
- the uploaded-file manager keeps every upload's bytes until the session ends; ``remove_file`` is
  what Streamlit itself calls when a file is removed from an uploader or a chat input.
Outside a server (AppTest, bare mode) a session always counts as connected and there is nothing to
release.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from typing import Callable, Iterable

from streamlit import runtime
from streamlit.runtime.scriptrunner import get_script_run_ctx

log = logging.getLogger("lychee_rerank.app")


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


def release_uploads(file_ids: Iterable[str]) -> None:
    """Drop these uploads of the current session from Streamlit's memory, then hand the freed
    memory back to the system (glibc keeps small freed blocks otherwise: the server would stay
    at its high-water mark)."""
    ctx = get_script_run_ctx()
    remove = getattr(getattr(ctx, "uploaded_file_mgr", None), "remove_file", None)
    if remove is None:
        return
    for file_id in file_ids:
        remove(ctx.session_id, file_id)
    trim_memory()


def trim_memory() -> None:
    """malloc_trim(0) on glibc: return free heap pages to the system. A no-op elsewhere."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        trim = getattr(libc, "malloc_trim", None)
        if trim is not None:
            trim(0)
    except OSError:
        log.debug("malloc_trim is not available")
