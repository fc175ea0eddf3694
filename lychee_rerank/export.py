"""CSV and JSON exports of a ranking: the same records for the app's downloads and the CLI."""

from __future__ import annotations

import csv
import io
import json
from typing import Iterable

from .results import ImageResult, ranked

COLUMNS = ("rank", "file", "score", "error", "width", "height", "model_width", "model_height", "visual_tokens")
NOT_SCORED = "not scored: the run was stopped before this image"
# A spreadsheet runs a cell starting with one of these as a formula.
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r", "\n")


def records(results: Iterable[ImageResult]) -> list[dict]:
    """One dict per image: scored ones by score (best first), then errors, then images not scored."""
    rows = []
    for r in ranked(results):
        error = r.error if r.status != "pending" else NOT_SCORED
        rows.append(
            {
                "rank": r.rank,
                "file": r.name,
                "score": r.score,
                "error": error,
                "width": r.width,
                "height": r.height,
                "model_width": r.model_width,
                "model_height": r.model_height,
                "visual_tokens": r.visual_tokens,
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
    return json.dumps({**metadata, "results": records(results)}, ensure_ascii=False, indent=2)
