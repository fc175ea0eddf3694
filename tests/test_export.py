"""CSV and JSON exports: every row written, whatever the file names hold."""

from __future__ import annotations

import csv
import io
import json
import os

from lychee_rerank.export import readable, to_csv, to_json
from lychee_rerank.results import ImageResult, Ranking

# A Latin-1 file name from an old archive, as os.fsdecode gives it on a UTF-8 system.
LATIN1_NAME = os.fsdecode(b"photos/caf\xe9 \xe0 la plage.jpg")
BROKEN_NAME = os.fsdecode(b"bad\xff.png")


def results() -> list[ImageResult]:
    return [
        ImageResult(0, LATIN1_NAME, score=0.9, width=10, height=10),
        ImageResult(1, "海边日落.png", score=0.4, width=10, height=10),
        ImageResult(2, BROKEN_NAME, error=f"file not found: {BROKEN_NAME}"),
    ]


def test_names_that_are_not_utf8_are_written_readably_with_their_exact_bytes():
    text = to_csv(results())
    text.encode("utf-8")  # writable to any UTF-8 file
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows[0]["file"] == "photos/caf\\xe9 \\xe0 la plage.jpg"
    assert bytes.fromhex(rows[0]["file_bytes"]) == b"photos/caf\xe9 \xe0 la plage.jpg"
    assert rows[1]["file"] == "海边日落.png" and rows[1]["file_bytes"] == ""
    assert rows[2]["error"] == "file not found: bad\\xff.png"

    ranking = Ranking(query="café", instruction=os.fsdecode(b"x\xff"), results=tuple(results()), mode="batched", elapsed_s=1.0)
    data = json.loads(to_json(ranking).encode("utf-8"))
    assert data["instruction"] == "x\\xff"
    records = data["results"]
    assert [r["file"] for r in records] == [row["file"] for row in rows]
    assert os.fsdecode(bytes.fromhex(records[0]["file_bytes"])) == LATIN1_NAME  # the path to open
    assert records[1]["file_bytes"] is None


def test_readable_text_is_left_as_it_is():
    assert readable("一只猫 a cat =1") == "一只猫 a cat =1"
