"""Large downloads (the ZIP of original files) served from disk by a route of the app's own, with the
connection's flow control: the server's memory does not grow with the archive.

Why not ``st.download_button``: Streamlit holds a download's bytes in memory, and its page checks each
download's address with a ``fetch()`` whose body it never reads, so the unsent rest of a 700 MB
archive stays in the server's socket buffer until the tab is closed (docs/deployment.md). Here the
ZIP is written to a temporary file; the page gets a link to ``/lychee/download/<token>`` (an
unguessable token, like Streamlit's own media addresses) that the route answers by streaming the
file in blocks, never faster than the browser reads. Each browser session keeps at most one
prepared file; a file is deleted when its session prepares another, when it expires (EXPIRY_S), and
when the server stops.

The route exists when ``streamlit run app.py`` serves app.py as an ASGI app (``st.App``: app.py mounts
``routes()``). Elsewhere (Streamlit's AppTest, a script run without the server) ``mounted()`` is
False and the page falls back to ``st.download_button``.
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import BinaryIO, Callable

ROUTE = "/lychee/download/{token}"
# A prepared file is kept this long after its last request (a slow or resumed download), then deleted.
EXPIRY_S = 30 * 60


@dataclass
class _Prepared:
    path: str
    filename: str
    owner: str  # the browser session that prepared it
    touched: float


_files: dict[str, _Prepared] = {}
_lock = threading.Lock()
_mounted = False
_directory: str | None = None


def route():
    """The download route (under ``server.baseUrlPath``)."""
    from starlette.routing import Route

    return Route(_base_path() + ROUTE, _serve, methods=["GET", "HEAD"])


def routes() -> list:
    """The app's own routes, for ``st.App(..., routes=routes())``: from then on the page links to them."""
    global _mounted
    _mounted = True
    return [route()]


def mounted() -> bool:
    return _mounted


def _base_path() -> str:
    from streamlit import config

    base = (config.get_option("server.baseUrlPath") or "").strip("/")
    return f"/{base}" if base else ""


def prepare(owner: str, filename: str, write: Callable[[BinaryIO], None]) -> tuple[str, int]:
    """Write a file with ``write(file)`` into a temporary file; returns the address that downloads it
    as ``filename``, and its size. The owner's previous file is deleted first: one per session."""
    forget(owner)
    _expire()
    fd, path = tempfile.mkstemp(prefix="download-", suffix=os.path.splitext(filename)[1], dir=_folder())
    try:
        with os.fdopen(fd, "wb") as file:
            write(file)
            size = file.tell()
    except BaseException:
        os.unlink(path)
        raise
    token = secrets.token_urlsafe(24)
    with _lock:
        _files[token] = _Prepared(path, filename, owner, time.monotonic())
    return _base_path() + ROUTE.format(token=token), size


def _folder() -> str:
    """This process's folder of prepared files, removed when it exits."""
    global _directory
    with _lock:
        if _directory is None:
            _directory = tempfile.mkdtemp(prefix="lychee-downloads-")
            atexit.register(shutil.rmtree, _directory, True)
        return _directory


def forget(owner: str) -> None:
    """Delete the file a session prepared (a new one replaces it; Clear; the session ending)."""
    with _lock:
        gone = [token for token, prepared in _files.items() if prepared.owner == owner]
        paths = [_files.pop(token).path for token in gone]
    _remove(paths)


def _expire() -> None:
    now = time.monotonic()
    with _lock:
        gone = [token for token, prepared in _files.items() if now - prepared.touched > EXPIRY_S]
        paths = [_files.pop(token).path for token in gone]
    _remove(paths)


def _remove(paths: list[str]) -> None:
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


async def _serve(request):
    from starlette.responses import FileResponse, PlainTextResponse

    with _lock:
        prepared = _files.get(request.path_params["token"])
        if prepared is not None:
            prepared.touched = time.monotonic()
    if prepared is None or not os.path.exists(prepared.path):
        return PlainTextResponse("This download has expired: prepare it again on the page.", status_code=404)
    # FileResponse sends the file in blocks, each after the last was taken: an unread request holds
    # one block, not the archive. Range requests (a resumed download) are answered too.
    return FileResponse(prepared.path, filename=prepared.filename)  # its type from the name (.zip)
