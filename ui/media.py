"""Uploads and pictures: content hashes, upload names, the query image check, cached thumbnails.

Images are decoded with the engine's own rules (lychee_rerank.images.load_image: orientation,
transparency, odd modes), so what the page shows is what the model sees. Thumbnails never cost a
second full-resolution decode: while a run scores, each is made from the picture the engine has
just decoded for the model (``keep_picture``); any other (an image not scored yet, a file that
failed, a thumbnail pushed out of the cache) is made when first shown, from a JPEG decoded at a
reduced DCT scale. They are kept in a cache bounded in bytes and shared by every session, so
reruns, filters and page changes never decode an image twice and the gallery only ever ships
small JPEGs.
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

from lychee_rerank.images import IMAGE_SUFFIXES, ImageError, ImageSource, load_image

from .state import Item

# For st.file_uploader(type=...): the usual photo and scan formats (the engine decodes them all).
UPLOAD_TYPES = [s for s in ("png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff") if f".{s}" in IMAGE_SUFFIXES]
THUMB_SIDE = 256
TABLE_THUMB_SIDE = 96
FULL_VIEW_SIDE = 2048
PREVIEW_SIDE = 320  # the query image's preview
# A strip thinner than this in its thumbnail (a 10000×10 image would be 256×0) shows its middle part
# instead, at this thickness: a visible strip rather than a blank card.
MIN_THUMB_THICKNESS = 24
CANVAS = (240, 242, 246)  # Streamlit's secondary background
CACHE_BYTES = 96 * 1000 * 1000  # all thumbnails of the process: ~15 KB per card, so several thousand

_DIGESTS_KEY = "_upload_digests"  # file_id -> digest, so a rerun never hashes an upload again
# Browsers percent-encode exactly these three characters in the file names of a form upload
# (HTML's multipart/form-data encoding); the name the user gave has them as they are.
_FORM_ESCAPES = (("%22", '"'), ("%0D", "\r"), ("%0A", "\n"))


def digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def upload_name(name: str) -> str:
    """The file's own name, undoing the browser's form encoding (`say%22hi%22.png` → `say"hi".png`)."""
    for escaped, char in _FORM_ESCAPES:
        name = name.replace(escaped, char)
    return name


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


def item_from_upload(uploaded) -> Item:
    """An Item holding the upload's own bytes (getvalue() of an untouched upload is Streamlit's copy,
    not a new one): an upload sits in memory once."""
    return Item(upload_name(uploaded.name), upload_digest(uploaded), uploaded.getvalue())


def items_from_uploads(files: Sequence) -> list[Item]:
    return [item_from_upload(f) for f in files]


def forget_digests(keep_ids: set[str]) -> None:
    cache: dict = st.session_state.get(_DIGESTS_KEY, {})
    for file_id in [k for k in cache if k not in keep_ids]:
        del cache[file_id]


# -- pictures -------------------------------------------------------------------------------------
def _jpeg(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def _fit(source: ImageSource, max_side: int, *, keep_strips_visible: bool = False) -> bytes | None:
    """A JPEG of the image at most ``max_side`` a side, or None when it cannot be decoded."""
    try:
        # A JPEG is decoded at the smallest DCT scale (1/2 .. 1/8) still covering max_side: a 12-MP
        # photo's thumbnail decodes about 1/64 of its pixels.
        picture = load_image(source, reduce_to=(max_side, max_side))
    except ImageError:
        return None
    if keep_strips_visible:
        long, short = max(picture.size), min(picture.size)
        most = max_side / MIN_THUMB_THICKNESS  # the widest ratio that stays visible
        if long > most * short:
            keep = round(short * most)  # the middle part, at that ratio
            if picture.width > picture.height:
                left = (picture.width - keep) // 2
                picture = picture.crop((left, 0, left + keep, picture.height))
            else:
                top = (picture.height - keep) // 2
                picture = picture.crop((0, top, picture.width, top + keep))
    picture.thumbnail((max_side, max_side))
    return _jpeg(picture)


class _ThumbnailCache:
    """LRU of small JPEGs (or None for undecodable files) by (identity, kind), bounded in bytes;
    fillable from any thread."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, str], bytes | None] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def full(self) -> bool:
        return self._bytes >= self.max_bytes

    def get(self, key: tuple[str, str], make: Callable[[], bytes | None]) -> bytes | None:
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        value = make()
        with self._lock:
            if key not in self._entries:
                self._entries[key] = value
                self._bytes += len(value or b"")
            while self._bytes > self.max_bytes and len(self._entries) > 1:
                _, dropped = self._entries.popitem(last=False)
                self._bytes -= len(dropped or b"")
        return value


_cache = _ThumbnailCache(CACHE_BYTES)


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
    return _jpeg(canvas)


def blank_card() -> bytes:
    """The square card of an image that cannot be shown (so every card has the same height)."""
    return _cache.get(("", "blank"), lambda: _jpeg(Image.new("RGB", (THUMB_SIDE, THUMB_SIDE), CANVAS)))


def thumb(item: Item) -> bytes | None:
    """A JPEG of at most 256 px a side, or None for a file that cannot be decoded."""
    return _cache.get((item.digest, "thumb"), lambda: _fit(item.source, THUMB_SIDE, keep_strips_visible=True))


def card_thumb(item: Item) -> bytes | None:
    """The gallery's square 256 px JPEG."""
    small = thumb(item)
    return None if small is None else _cache.get((item.digest, "card"), lambda: _square(small))


def table_thumb_uri(item: Item) -> str | None:
    """A tiny JPEG as a data URI (st.column_config.ImageColumn), made from the cached thumbnail."""
    small = thumb(item)
    if small is None:
        return None
    tiny = _cache.get((item.digest, "table"), lambda: _fit(small, TABLE_THUMB_SIDE))
    return None if tiny is None else "data:image/jpeg;base64," + base64.b64encode(tiny).decode("ascii")


def keep_picture(item: Item, picture: Image.Image, size: tuple[int, int]) -> None:
    """The thumbnail of an image being scored, made from the picture the engine decoded for the
    model (Reranker.run's on_picture, in a preprocessing thread): a small resize, no decoding. The
    picture is at model size, its sides rounded to 28 pixels; ``size`` restores the true aspect
    ratio. Strips thin enough to need cropping are left to ``thumb`` (their middle part)."""
    width, height = size
    if max(width, height) > min(width, height) * THUMB_SIDE / MIN_THUMB_THICKNESS or _cache.full():
        return
    scale = min(1.0, THUMB_SIDE / max(width, height))
    target = (max(1, round(width * scale)), max(1, round(height * scale)))
    # reduce() by whole factors first (a box filter), then a bilinear step: about 1 ms instead of 5 for
    # a model-size picture, taken from the preprocessing threads the ranking runs on.
    _cache.get((item.digest, "thumb"), lambda: _jpeg(picture.resize(target, Image.Resampling.BILINEAR, reducing_gap=1.0)))
    card_thumb(item)  # the gallery's square card too: nothing left to make when the results appear


def full_view(item: Item) -> bytes | None:
    """The image as the model sees it (orientation applied), at most 2048 px a side, as JPEG."""
    return _fit(item.source, FULL_VIEW_SIDE)


def query_image_preview(data: bytes) -> tuple[bytes | None, str | None]:
    """(a small JPEG of the query image, None), or (None, why it cannot be used: one sentence)."""
    try:
        picture = load_image(data)
    except ImageError as exc:
        return None, str(exc)
    picture.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
    return _jpeg(picture), None


def mime_type(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def download_name(name: str) -> str:
    """A plain file name for a download (folder uploads and server files may carry a path)."""
    return os.path.basename(name.replace("\\", "/")) or "image"


def original_bytes(item: Item) -> bytes | Callable[[], bytes]:
    """For st.download_button: an upload's bytes as they are; a server file is read on click only."""
    if isinstance(item.source, (bytes, bytearray)):
        return item.source
    return item.source.read_bytes  # checked where it is opened (ImageError for a link out of the data folder)
