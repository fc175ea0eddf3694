"""A ZIP of the original image files of a ranking (its top K, or any selection), named by rank.

Files are streamed into the archive in blocks: a path is never read into memory whole, and bytes
already in memory (uploads) are written as they are. Formats that are already compressed are
stored, not deflated again (it would cost CPU time and save nothing). A server file is read through
its ``DataFile`` (checked where it is opened: a link swapped in that leads out of the data folder is
never read). A file that cannot be read is left out and named, with why, in ``NOT_INCLUDED.txt``
inside the archive: the rest of the download is not lost.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import time
import zipfile
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Iterable, Union

from .confine import DataFile
from .images import ImageError
from .results import ImageResult

ArchiveSource = Union[str, os.PathLike, bytes, bytearray, DataFile]
SKIPPED_LIST = "NOT_INCLUDED.txt"

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
    """Bytes the entry adds to the archive (about: stored entries add a small header); 0 when unreadable."""
    if isinstance(source, (bytes, bytearray)):
        return len(source)
    if isinstance(source, DataFile):
        return source.size()
    try:
        return os.path.getsize(source)
    except OSError:
        return 0


@dataclass
class ZipReport:
    written: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, why it is not in the archive)


def _open(source: ArchiveSource) -> BinaryIO:
    if isinstance(source, DataFile):
        return source.open()
    try:
        return open(source, "rb")
    except OSError as exc:
        raise ImageError(f"the file cannot be read ({exc.strerror or exc})") from None


def write_zip(out: BinaryIO, archive_entries: Iterable[ArchiveEntry]) -> ZipReport:
    """Write the entries into a ZIP on ``out`` (a file or buffer opened for binary writing). A file
    that cannot be read (removed, unreadable, a link out of the data folder) is left out and listed
    in SKIPPED_LIST inside the archive; the report says what was written and what was not."""
    report = ZipReport()
    with zipfile.ZipFile(out, "w", allowZip64=True) as archive:
        for entry in archive_entries:
            suffix = os.path.splitext(entry.name)[1].lower()
            method = zipfile.ZIP_STORED if suffix in _COMPRESSED_SUFFIXES else zipfile.ZIP_DEFLATED
            if isinstance(entry.source, (bytes, bytearray)):
                archive.writestr(zipfile.ZipInfo(entry.name), bytes(entry.source), compress_type=method)
                report.written += 1
                continue
            try:
                src = _open(entry.source)
            except ImageError as exc:
                report.skipped.append((entry.name, str(exc)))
                continue
            with src:
                info = _info(entry.name, os.fstat(src.fileno()), method)  # what was opened, not the path
                with archive.open(info, "w", force_zip64=True) as dst:
                    shutil.copyfileobj(src, dst, _BLOCK)
            report.written += 1
        if report.skipped:
            lines = [f"{name}: {why}" for name, why in report.skipped]
            archive.writestr(SKIPPED_LIST, "These files could not be added:\n" + "\n".join(lines) + "\n")
    return report


def _info(name: str, status: os.stat_result, method: int) -> zipfile.ZipInfo:
    """ZipInfo.from_file's fields, from the opened file's own status."""
    year, month, day, hour, minute, second = time.localtime(status.st_mtime)[:6]
    info = zipfile.ZipInfo(name, (max(1980, year), month, day, hour, minute, second))
    info.external_attr = (stat.S_IMODE(status.st_mode) | stat.S_IFREG) << 16
    info.file_size = status.st_size
    info.compress_type = method
    return info
