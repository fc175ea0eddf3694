"""Where a document's image comes from: a ``data:`` URI (always), a file inside the data folder
(``file://`` or a plain path, only when the operator set ``LYCHEE_DATA_DIR``), or an ``http(s)://``
URL (only when the operator allowed it). Each becomes bytes or a confined file, or a ``SourceError``
whose message is one sentence about that document alone.

Files are confined where they are opened: the name is resolved and checked here, and the engine
opens it as a ``lychee_rerank.confine.DataFile``, whose opened descriptor's own real path is checked
again, so a link swapped in between cannot lead out of the data folder. Inline and remote images
have a size limit (the data folder's files are the operator's own); remote ones a time limit too,
and their redirects are followed by hand, to http(s) only (never to ``file:``).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, unquote_to_bytes, urljoin, urlsplit

from ..confine import DataFile, inside
from ..images import is_image_path

MIB = 1024 * 1024
REMOTE_SCHEMES = ("http", "https")
MAX_REDIRECTS = 3


class SourceError(ValueError):
    """A document whose image cannot be had; the message is one sentence."""


@dataclass(frozen=True)
class SourcePolicy:
    """What the operator lets documents name."""

    data_dir: Path | None = None  # resolved; None: no files at all
    allow_remote: bool = False
    max_image_bytes: int = 20 * MIB
    remote_timeout_s: float = 10.0


def describe(reference: str) -> str:
    """A reference as a message may show it: a data: URI by its kind, never its bytes."""
    if reference[:5].lower() == "data:":
        return "the data: URI"
    return reference if len(reference) <= 200 else reference[:199] + "…"


def is_reference(text: str) -> bool:
    """Whether a plain string document names an image (a URL or a path) rather than being text."""
    scheme = urlsplit(text).scheme.lower() if ":" in text[:12] else ""
    if scheme in ("data", "file", *REMOTE_SCHEMES):
        return True
    return bool(text) and not any(c.isspace() for c in text) and (text.startswith("/") or is_image_path(text))


_BASE64 = re.compile(r"[A-Za-z0-9+/\s]+={0,2}\s*")


def bare_base64(text: str) -> str | None:
    """Jina's ``{"image": "<base64>"}`` as a data: URI (decoded later, strictly and size-limited, like
    any other), or None when the text is not bare base64 (a URL or a path)."""
    if len(text) < 32 or not _BASE64.fullmatch(text):
        return None
    return "data:;base64," + text


def _strict_base64(text: str) -> bytes | None:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def decode_base64(text: str, what: str, limit: int) -> bytes:
    """Strict base64 (no stray characters), refused above ``limit`` decoded bytes."""
    text = "".join(text.split())  # line breaks inside base64 (MIME style) are harmless
    if len(text) * 3 // 4 > limit:
        raise SourceError(f"{what} holds more than {limit / MIB:g} MB, the most this service takes per image")
    data = _strict_base64(text)
    if data is None:
        raise SourceError(f"{what} is not valid base64; encode the image's bytes with standard base64")
    if not data:
        raise SourceError(f"{what} is empty")
    return data


def data_uri(reference: str, limit: int) -> bytes:
    """The bytes of ``data:[<type>][;base64],<data>``."""
    header, comma, payload = reference.partition(",")
    if not comma:
        raise SourceError("the data: URI has no comma before its data; write data:image/png;base64,<data>")
    if header.lower().endswith(";base64"):
        return decode_base64(payload, "the data: URI's base64 data", limit)
    data = unquote_to_bytes(payload)
    if len(data) > limit:
        raise SourceError(f"the data: URI holds more than {limit / MIB:g} MB, the most this service takes per image")
    return data


def confined_file(path: str, root: Path) -> DataFile:
    """A file inside ``root``, as the engine's confined source (``DataFile``: whatever the name leads
    to when it is opened for scoring must lie inside). Checked here too, to name the problem: a path
    outside the folder (also through a link) is refused without being opened."""
    candidate = Path(path).expanduser()
    full = candidate if candidate.is_absolute() else root / candidate
    if not inside(os.path.realpath(full), os.path.realpath(root)):
        raise SourceError(f"{path} is outside the data folder; only files inside it can be ranked")
    if not os.path.isfile(full):
        raise SourceError(f"there is no file {path} in the data folder")
    return DataFile.under(root, full)


def local_path(reference: str) -> str:
    """The path a ``file://`` URL or a plain path names."""
    if reference[:7].lower() == "file://":
        parts = urlsplit(reference)
        if parts.netloc not in ("", "localhost"):
            raise SourceError(f"{describe(reference)} names another host; file URLs must be local (file:///path)")
        return unquote(parts.path)
    return reference


async def fetch_remote(url: str, policy: SourcePolicy, client) -> bytes:
    """An http(s) image, size- and time-limited; redirects followed by hand, to http(s) only."""
    import httpx2

    limit = policy.max_image_bytes
    for _ in range(MAX_REDIRECTS + 1):
        try:
            async with client.stream("GET", url, timeout=policy.remote_timeout_s) as response:
                if response.is_redirect:
                    target = urljoin(url, response.headers.get("location", ""))
                    if urlsplit(target).scheme.lower() not in REMOTE_SCHEMES:
                        raise SourceError(f"{describe(url)} redirects to {describe(target)}; only http(s) redirects are followed")
                    url = target
                    continue
                if response.status_code != 200:
                    raise SourceError(f"{describe(url)} answered HTTP {response.status_code}, not an image")
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > limit:
                    raise SourceError(f"{describe(url)} is larger than {limit / MIB:g} MB, the most this service takes per image")
                data = bytearray()
                async for chunk in response.aiter_bytes():
                    data += chunk
                    if len(data) > limit:
                        raise SourceError(f"{describe(url)} is larger than {limit / MIB:g} MB, the most this service takes per image")
                return bytes(data)
        except httpx2.TimeoutException:
            raise SourceError(f"{describe(url)} did not arrive within {policy.remote_timeout_s:g} s") from None
        except httpx2.HTTPError as exc:
            raise SourceError(f"{describe(url)} could not be fetched ({type(exc).__name__})") from None
    raise SourceError(f"{describe(url)} redirects more than {MAX_REDIRECTS} times")


async def image_source(reference: str, policy: SourcePolicy, client=None) -> bytes | DataFile:
    """The image a document names, as bytes or a confined data-folder file; SourceError (one
    sentence) when it cannot be had."""
    if not isinstance(reference, str) or not reference.strip():
        raise SourceError("the image URL is empty")
    reference = reference.strip()
    scheme = urlsplit(reference).scheme.lower() if ":" in reference[:12] else ""
    if scheme == "data":
        return data_uri(reference, policy.max_image_bytes)
    if scheme in REMOTE_SCHEMES:
        if not policy.allow_remote or client is None:
            raise SourceError(
                f"{describe(reference)} is a remote URL, and this service does not fetch remote images "
                "(its operator can allow them with --allow-remote); send the image as a data: URI"
            )
        return await fetch_remote(reference, policy, client)
    if scheme not in ("", "file"):
        raise SourceError(f"{describe(reference)} has the scheme {scheme!r}; use a data:, file:// or http(s):// URL")
    if policy.data_dir is None:
        raise SourceError(
            f"{describe(reference)} is a file path, and this service reads no files (its operator can set "
            "LYCHEE_DATA_DIR to a folder of images); send the image as a data: URI"
        )
    return confined_file(local_path(reference), policy.data_dir)
