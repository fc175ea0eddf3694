"""CSV and JSON exports of a ranking: one schema (the same keys, the same types) for the app's
downloads, the CLI and the Ray command; and writing them safely.

Scores are written at full precision (the shortest text that reads back as the same float), never
rounded: the order of near-ties must be rebuildable from the file. CSV rows end in CRLF (RFC 4180),
so a carriage return inside a name is quoted like a line feed is.

File names that are not valid text. On Linux a file name is bytes; Python turns bytes that are not
UTF-8 into lone surrogates (``os.fsdecode``), which no UTF-8 file can hold. Every text cell is
therefore written readably — each undecodable byte as ``\\xNN``, the rest as it is — and the
``file_bytes`` column holds the exact bytes of such a name in hexadecimal (empty, or null in JSON,
for the usual name that is valid text): ``bytes.fromhex(row["file_bytes"])`` gives back the path.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import stat
import tempfile
from typing import TYPE_CHECKING, Iterable

from .results import ImageResult, ranked

if TYPE_CHECKING:
    from .results import Ranking

COLUMNS = (
    "rank", "file", "score", "error", "width", "height", "model_width", "model_height", "visual_tokens", "file_bytes",
    "retrieval_rank", "similarity",  # search then rerank only (empty otherwise): the first stage's place and cosine
)
NOT_SCORED = "not scored: the run was stopped before this image"
# A spreadsheet runs a cell starting with one of these as a formula.
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r", "\n")


def name_bytes(text: str) -> bytes | None:
    """The exact bytes of a name that is not valid text (lone surrogates); None for valid text."""
    try:
        text.encode("utf-8")
        return None
    except UnicodeEncodeError:
        pass
    try:
        return text.encode("utf-8", "surrogateescape")  # os.fsdecode's surrogates, back to bytes
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")  # other lone surrogates (Windows names)


def readable(text: str) -> str:
    """Text safe for any UTF-8 file or terminal: undecodable bytes of a name shown as ``\\xNN``."""
    raw = name_bytes(text)
    return text if raw is None else raw.decode("utf-8", "backslashreplace")


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def terminal_safe(text: str) -> str:
    """``readable`` text with every control character shown escaped (``\\x1b``, ``\\r``, ...): a file
    name printed to a terminal must not clear the screen, set the window title or split a line."""
    return _CONTROL.sub(lambda m: m.group(0).encode("unicode_escape").decode("ascii"), readable(text))


def _readable_value(value):
    return readable(value) if isinstance(value, str) else value


def records(results: Iterable[ImageResult]) -> list[dict]:
    """One dict per image: scored ones by score (best first), then errors, then images not scored."""
    rows = []
    for r in ranked(results):
        error = r.error if r.status != "pending" else NOT_SCORED
        raw_name = name_bytes(r.name)
        rows.append(
            {
                "rank": r.rank,
                "file": readable(r.name),
                "score": r.score,
                "error": _readable_value(error),
                "width": r.width,
                "height": r.height,
                "model_width": r.model_width,
                "model_height": r.model_height,
                "visual_tokens": r.visual_tokens,
                "file_bytes": None if raw_name is None else raw_name.hex(),
                "retrieval_rank": r.retrieval_rank,
                "similarity": r.similarity,
            }
        )
    return rows


def _safe_cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)  # the shortest text that reads back as the same float: no rounding
    text = str(value)
    return "'" + text if text.startswith(_FORMULA_PREFIXES) else text


def to_csv(results: Iterable[ImageResult]) -> str:
    """CSV text (header ``rank,file,score,error,...``); text cells a spreadsheet would run are neutralised."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    for row in records(results):
        writer.writerow([_safe_cell(row[c]) for c in COLUMNS])
    return buffer.getvalue()


def metadata(ranking: "Ranking", **extra) -> dict:
    """What every JSON export holds besides the rows: the run's whole settings (``RunSettings.record``)
    and how it went. The one schema for the app, the CLI and the Ray command."""
    settings = ranking.settings.record() if ranking.settings is not None else {}
    data = {
        **settings,
        "model": ranking.model or settings.get("model"),
        "query": ranking.query,
        "instruction": ranking.instruction,
        "demo_model": ranking.is_demo,
        "quantization": ranking.quantization,
        "mode_used": ranking.mode,
        "elapsed_s": ranking.elapsed_s,
        "cache_hits": ranking.cache_hits,  # the vision-feature cache; null when it was not used
        "cache_misses": ranking.cache_misses,
        "cancelled": ranking.cancelled,
        "error": ranking.error,
        "scored": len(ranking.scored),
        "errors": len(ranking.errors),
        "pending": len(ranking.pending),
    }
    if ranking.retrieval is not None:
        data["retrieval"] = ranking.retrieval.record()
        data["not_retrieved"] = ranking.not_retrieved  # images outside the top K: not scored
    if ranking.is_demo:
        data["note"] = "demo model: random weights, the scores mean nothing"
    data.update(extra)
    return data


def to_json(ranking: "Ranking", **extra) -> str:
    """JSON text: ``{...metadata, "results": [records]}``."""
    data = {key: _readable_value(value) for key, value in metadata(ranking, **extra).items()}
    return json.dumps({**data, "results": records(ranking.results)}, ensure_ascii=False, indent=2)


class OutputError(OSError):
    """An output could not be written; the previous file, if any, is intact. One sentence."""


def write_atomically(path: str | os.PathLike, text: str | bytes) -> None:
    """Write ``text`` (UTF-8) or bytes to ``path`` so that it is either the new file, whole, or the
    old one, untouched: a temporary file in the same folder, fsync, then rename over the target. A
    link is written through (its target is replaced). Raises OutputError."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    target = os.path.realpath(path)
    folder = os.path.dirname(target)
    try:
        if not stat.S_ISREG(os.stat(target).st_mode):  # a device or a pipe is written to, never replaced
            _write_in_place(path, target, data)
            return
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise OutputError(f"could not write {os.fspath(path)}: {exc.strerror or exc}") from None
    try:
        fd, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".partial", dir=folder)
    except OSError as exc:
        raise OutputError(f"could not write {os.fspath(path)}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        try:
            os.chmod(temporary, os.stat(target).st_mode & 0o7777)  # an existing file keeps its permissions
        except FileNotFoundError:
            os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, target)
    except OSError as exc:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        kept = " (the previous file is unchanged)" if os.path.exists(target) else ""
        raise OutputError(f"could not write {os.fspath(path)}: {exc.strerror or exc}{kept}") from None
    try:  # the rename itself is durable once the folder is synced
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def _write_in_place(path, target: str, data: bytes) -> None:
    try:
        with open(target, "wb") as file:
            file.write(data)
    except OSError as exc:
        raise OutputError(f"could not write {os.fspath(path)}: {exc.strerror or exc}") from None


def _umask() -> int:
    """The process's umask, read without changing it (os.umask would, for every thread)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def same_file(first: str | os.PathLike, second: str | os.PathLike) -> bool:
    """Whether two output paths name one file: the same spelling, a link, or a hard link."""
    try:
        return os.path.samefile(first, second)
    except OSError:  # one does not exist yet: compare where each would be written
        return os.path.realpath(first) == os.path.realpath(second)
