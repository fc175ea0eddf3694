"""The command line: exit codes, the printed ranking, and the CSV/JSON files."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from imagegen import encode, photo

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "lychee_rerank", *args],
        cwd=cwd or ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def folder(tmp_path):
    """A folder as users have them: photos in subfolders, a broken file, a file that is not an image."""
    root = tmp_path / "some-folder"
    (root / "trip").mkdir(parents=True)
    (root / "beach.jpg").write_bytes(encode(photo(120, 80, seed=1), "JPEG"))
    (root / "trip" / "sunset.png").write_bytes(encode(photo(64, 64, seed=2)))
    (root / "trip" / "cat.webp").write_bytes(encode(photo(90, 60, seed=3), "WEBP"))
    (root / "=HYPERLINK(1).png").write_bytes(encode(photo(40, 40, seed=4)))
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a whole jpeg")
    (root / "notes.txt").write_text("not an image")
    return root


def test_rank_scores_every_image_in_a_folder_and_writes_csv_and_json(folder, tmp_path):
    out_csv, out_json = tmp_path / "out.csv", tmp_path / "out.json"
    result = run_cli(
        "rank", "--model", "demo", "--query", "一只猫 a cat", "some-folder",
        "--csv", str(out_csv), "--json", str(out_json), cwd=folder.parent,
    )
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(out_csv.read_text(encoding="utf-8"))))
    assert list(rows[0].keys())[:4] == ["rank", "file", "score", "error"]
    files = {row["file"] for row in rows}
    expected = {
        os.path.join("some-folder", name)
        for name in ("beach.jpg", "trip/sunset.png", "trip/cat.webp", "=HYPERLINK(1).png", "broken.jpg")
    }
    assert files == expected
    scored = [row for row in rows if row["score"]]
    errored = [row for row in rows if not row["score"]]
    assert rows == scored + errored  # scored rows first
    assert [float(r["score"]) for r in scored] == sorted((float(r["score"]) for r in scored), reverse=True)
    assert [int(r["rank"]) for r in scored] == [1, 2, 3, 4]
    assert [r["file"] for r in errored] == [os.path.join("some-folder", "broken.jpg")]
    assert errored[0]["rank"] == "" and errored[0]["error"]
    # The text file in the folder is reported, not scored.
    assert "notes.txt" in result.stderr
    assert "meaningless" in result.stderr  # the demo model says its scores mean nothing
    data = json.loads(out_json.read_text(encoding="utf-8"))
    assert data["query"] == "一只猫 a cat" and data["demo_model"] is True
    assert [r["file"] for r in data["results"]] == [row["file"].removeprefix("'") for row in rows]
    # The ranking table is printed too.
    assert "beach.jpg" in result.stdout and "rank" in result.stdout.splitlines()[0]


def test_csv_cells_a_spreadsheet_would_run_are_neutralised(tmp_path):
    image = tmp_path / "=cmd.png"
    image.write_bytes(encode(photo(30, 30)))
    out_csv = tmp_path / "out.csv"
    result = run_cli("rank", "--model", "demo", "-q", "cat", "=cmd.png", "--csv", str(out_csv), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    row = next(csv.DictReader(io.StringIO(out_csv.read_text(encoding="utf-8"))))
    assert row["file"] == "'=cmd.png"


def test_both_modes_rank_the_same_way(folder, tmp_path):
    outputs = {}
    for mode in ("sequential", "batched"):
        out = tmp_path / f"{mode}.json"
        result = run_cli("rank", "--model", "demo", "-q", "sunset", str(folder), "--mode", mode, "--json", str(out))
        assert result.returncode == 0, result.stderr
        outputs[mode] = json.loads(out.read_text())["results"]
    assert [r["file"] for r in outputs["sequential"]] == [r["file"] for r in outputs["batched"]]
    for a, b in zip(outputs["sequential"], outputs["batched"]):
        assert (a["score"] is None) == (b["score"] is None)
        if a["score"] is not None:
            assert a["score"] == pytest.approx(b["score"], abs=1e-4)


def test_a_path_that_does_not_exist_is_a_bad_invocation(tmp_path):
    result = run_cli("rank", "--model", "demo", "-q", "cat", str(tmp_path / "missing"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"lychee-rerank: no such file or folder: {tmp_path / 'missing'}"]


def test_a_folder_without_images_is_a_bad_invocation(tmp_path):
    (tmp_path / "readme.txt").write_text("hello")
    result = run_cli("rank", "--model", "demo", "-q", "cat", str(tmp_path))
    assert result.returncode == 2
    assert "no images found" in result.stderr


def test_a_missing_query_is_a_bad_invocation(folder):
    result = run_cli("rank", "--model", "demo", str(folder))
    assert result.returncode == 2
    assert "--query" in result.stderr


def test_a_model_directory_that_does_not_exist_fails_with_one_sentence(folder, tmp_path):
    result = run_cli("rank", "--model", str(tmp_path / "no-such-model"), "-q", "cat", str(folder))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("lychee-rerank: model directory not found")
    assert "Traceback" not in result.stderr


def test_a_hub_model_that_cannot_be_downloaded_fails_with_one_sentence(folder):
    result = run_cli("rank", "--model", "vec-ai/lychee-rerank-mm", "-q", "cat", str(folder))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "could not download vec-ai/lychee-rerank-mm" in result.stderr
    assert "demo" in result.stderr


def test_an_unwritable_output_is_reported_after_the_ranking(folder, tmp_path):
    result = run_cli("rank", "--model", "demo", "-q", "cat", str(folder), "--csv", str(tmp_path / "no" / "dir" / "x.csv"))
    assert result.returncode == 1
    assert "could not write" in result.stderr
    assert "beach.jpg" in result.stdout


def test_top_k_prints_only_the_best_rows_and_still_lists_errors(folder):
    result = run_cli("rank", "--model", "demo", "-q", "cat", str(folder), "--top", "1")
    assert result.returncode == 0, result.stderr
    rows = result.stdout.strip().splitlines()[1:]
    assert [row.split()[0] for row in rows] == ["1", "-"]
    assert "broken.jpg" in rows[1] and "corrupt" in rows[1]
