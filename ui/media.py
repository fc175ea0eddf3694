"""Uploads and pictures: content hashes, the session's image set, cached thumbnails.

Thumbnails are cached by content hash, so reruns, filters and page changes never decode an image
twice; the gallery only ever ships small JPEGs.
"""

from __future__ import annotations

import base64
import hashlib
import io
import mimetypes
import os
import threading
from collections import OrderedDict
from typing import Callable, Sequence

import streamlit as st
from PIL import Image

from lychee_rerank.images import IMAGE_SUFFIXES, ImageError, thumbnail

from .state import Item

# For st.file_uploader(type=...): the usual photo and scan formats (the engine decodes them all).
UPLOAD_TYPES = [s for s in ("png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff") if f".{s}" in IMAGE_SUFFIXES]
THUMB_SIDE = 256
TABLE_THUMB_SIDE = 96
FULL_VIEW_SIDE = 2048
CANVAS = (240, 242, 246)  # Streamlit's secondary background

_DIGESTS_KEY = "_upload_digests"  # file_id -> digest, so a rerun never hashes an upload again


def digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def upload_digest(uploaded) -> str:
    """Content hash of an st.file_uploader file, computed once per upload."""
    cache: dict = st.session_state.setdefault(_DIGESTS_KEY, {})
    file_id = getattr(uploaded, "file_id", None)
    if file_id is not None and file_id in cache:
        return cache[file_id]
    value = digest(uploaded.getvalue())
    if file_id is not None:
        cache[file_id] = value
    return value


def items_from_uploads(files: Sequence) -> list[Item]:
    return [Item(f.name, upload_digest(f), f.getvalue()) for f in files]


def forget_digests(keep_ids: set[str]) -> None:
    cache: dict = st.session_state.get(_DIGESTS_KEY, {})
    for file_id in [k for k in cache if k not in keep_ids]:
        del cache[file_id]


# Thumbnails by content hash, shared by every session of the process (like st.cache_data, but also
# fillable from the background thread that prepares them while a run is scoring).
_CACHE_ENTRIES = 6000  # ~15 KB each: about 100 MB at most
_cache: OrderedDict[tuple[str, str], bytes | None] = OrderedDict()
_cache_lock = threading.Lock()


def _cached(key: tuple[str, str], make: Callable[[], bytes | None]) -> bytes | None:
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    value = make()
    with _cache_lock:
        _cache[key] = value
        while len(_cache) > _CACHE_ENTRIES:
            _cache.popitem(last=False)
    return value


def _thumbnail(data: bytes, max_side: int) -> bytes | None:
    try:
        return thumbnail(data, max_side=max_side)
    except ImageError:
        return None


def _square(thumb_jpeg: bytes) -> bytes:
    """The thumbnail centred on a square canvas, so gallery cards line up whatever the aspect ratio."""
    with Image.open(io.BytesIO(thumb_jpeg)) as picture:
        picture = picture.convert("RGB")
        scale = min(THUMB_SIDE / picture.width, THUMB_SIDE / picture.height)
        if scale > 1:  # small images fill the card too
            size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
            picture = picture.resize(size, Image.Resampling.LANCZOS)
        canvas = Image.new("RGB", (THUMB_SIDE, THUMB_SIDE), CANVAS)
        canvas.paste(picture, ((THUMB_SIDE - picture.width) // 2, (THUMB_SIDE - picture.height) // 2))
    buffer = io.BytesIO()
    canvas.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def thumb(item: Item) -> bytes | None:
    """A JPEG of at most 256 px a side, or None for a file that cannot be decoded."""
    return _cached((item.digest, "thumb"), lambda: _thumbnail(item.data, THUMB_SIDE))


def card_thumb(item: Item) -> bytes | None:
    """The gallery's square 256 px JPEG."""
    small = thumb(item)
    return None if small is None else _cached((item.digest, "card"), lambda: _square(small))


def table_thumb_uri(item: Item) -> str | None:
    """A tiny JPEG as a data URI (st.column_config.ImageColumn), made from the cached thumbnail."""
    small = thumb(item)
    if small is None:
        return None
    tiny = _cached((item.digest, "table"), lambda: _thumbnail(small, TABLE_THUMB_SIDE))
    return None if tiny is None else "data:image/jpeg;base64," + base64.b64encode(tiny).decode("ascii")


def prepare_thumbnails(items: Sequence[Item], stop: threading.Event) -> threading.Thread:
    """Make the gallery's thumbnails in a background thread while a run scores (the CPU is mostly idle
    during GPU forwards), so the results appear at once when it ends."""

    def work() -> None:
        for item in items:
            if stop.is_set():
                return
            card_thumb(item)

    thread = threading.Thread(target=work, name="lychee-app-thumbnails", daemon=True)
    thread.start()
    return thread


def full_view(item: Item) -> bytes | None:
    """The image as the model sees it (orientation applied), at most 2048 px a side, as JPEG."""
    try:
        return thumbnail(item.data, max_side=FULL_VIEW_SIDE)
    except ImageError:
        return None


def mime_type(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def download_name(name: str) -> str:
    """A plain file name for a download (folder uploads may carry a path)."""
    return os.path.basename(name.replace("\\", "/")) or "image"
