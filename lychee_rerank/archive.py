"""A ZIP of the original image files of a ranking (its top K, or any selection), named by rank.

Files are streamed into the archive in blocks: a path is never read into memory whole, and bytes
already in memory (uploads) are written as they are. Formats that are already compressed are
stored, not deflated again (it would cost CPU time and save nothing).
"""

from __future__ import annotations

import os
import re
import shutil
import zipfile
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterable, Union

from .results import ImageResult

ArchiveSource = Union[str, os.PathLike, bytes, bytearray]

_COMPRESSED_SUFFIXES = frozenset({".jpg", ".jpeg", ".jfif", ".pjpeg", ".pjp", ".png", ".webp", ".gif", ".avif", ".heic"})
_BLOCK = 1 << 20
# Characters that are unsafe or confusing in a file name on some system: separators, control
# characters, and the ones Windows refuses.
_UNSAFE = re.compile(r'[\x00-\x1f\x7f<>:"/\\|?*]')


@dataclass(frozen=True)
class ArchiveEntry:
    """One file in the archive: its name inside the ZIP and where its bytes come from."""

    name: str
    source: ArchiveSource


def _base_name(name: str) -> str:
    """The file's own name (no folders), safe to extract anywhere."""
    base = name.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    base = _UNSAFE.sub("_", base).strip(" .")
    return base or "image"


def entry_names(results: Iterable[ImageResult]) -> list[str]:
    """Names inside the ZIP: the rank, zero-padded so they sort, then the file's own name
    ('007_sunset.jpg'). Unique even when two results share a rank or a name."""
    results = list(results)
    ranks = [r.rank for r in results if r.rank is not None]
    width = max(3, len(str(max(ranks, default=0))))
    names: list[str] = []
    seen: set[str] = set()
    for result in results:
        prefix = f"{result.rank:0{width}d}" if result.rank is not None else "unranked"
        stem, dot, suffix = _base_name(result.name).rpartition(".")
        if not dot:
            stem, suffix = suffix, ""
        candidate, n = f"{prefix}_{stem}{dot}{suffix}", 1
        while candidate.lower() in seen:  # case-insensitive: the archive may be unpacked on Windows or macOS
            n += 1
            candidate = f"{prefix}_{stem}-{n}{dot}{suffix}"
        seen.add(candidate.lower())
        names.append(candidate)
    return names


def entries(results: Iterable[ImageResult], source_of: Callable[[ImageResult], ArchiveSource]) -> list[ArchiveEntry]:
    """The archive's entries for ``results`` (in the order given), each read from ``source_of(result)``."""
    results = list(results)
    return [ArchiveEntry(name, source_of(r)) for name, r in zip(entry_names(results), results)]


def source_size(source: ArchiveSource) -> int:
    """Bytes the entry adds to the archive (about: stored entries add a small header)."""
    if isinstance(source, (bytes, bytearray)):
        return len(source)
    return os.path.getsize(source)


def write_zip(out: BinaryIO, archive_entries: Iterable[ArchiveEntry]) -> int:
    """Write the entries into a ZIP on ``out`` (a file or buffer opened for binary writing).
    Returns the number of files written. A file that cannot be read raises OSError."""
    count = 0
    with zipfile.ZipFile(out, "w", allowZip64=True) as archive:
        for entry in archive_entries:
            suffix = os.path.splitext(entry.name)[1].lower()
            method = zipfile.ZIP_STORED if suffix in _COMPRESSED_SUFFIXES else zipfile.ZIP_DEFLATED
            if isinstance(entry.source, (bytes, bytearray)):
                archive.writestr(zipfile.ZipInfo(entry.name), bytes(entry.source), compress_type=method)
            else:
                info = zipfile.ZipInfo.from_file(entry.source, entry.name)
                info.compress_type = method
                with open(entry.source, "rb") as src, archive.open(info, "w", force_zip64=True) as dst:
                    shutil.copyfileobj(src, dst, _BLOCK)
            count += 1
    return count
