"""CSV and JSON exports of a ranking: the same records for the app's downloads and the CLI.

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
from typing import Iterable

from .results import ImageResult, ranked

COLUMNS = (
    "rank", "file", "score", "error", "width", "height", "model_width", "model_height", "visual_tokens", "file_bytes",
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
            }
        )
    return rows


def _safe_cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6f}"
    text = str(value)
    return "'" + text if text.startswith(_FORMULA_PREFIXES) else text


def to_csv(results: Iterable[ImageResult]) -> str:
    """CSV text (header ``rank,file,score,error,...``); text cells a spreadsheet would run are neutralised."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in records(results):
        writer.writerow([_safe_cell(row[c]) for c in COLUMNS])
    return buffer.getvalue()


def to_json(results: Iterable[ImageResult], **metadata) -> str:
    """JSON text: ``{...metadata, "results": [records]}``."""
    metadata = {key: _readable_value(value) for key, value in metadata.items()}
    return json.dumps({**metadata, "results": records(results)}, ensure_ascii=False, indent=2)
