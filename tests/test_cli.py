"""The command line: exit codes, the printed ranking, and the CSV/JSON files."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, features

from file_access import permission_enforcing_prefix
from imagegen import encode, photo

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, cwd: Path | None = None, prefix: tuple[str, ...] = (), inject: str = "",
            **env: str) -> subprocess.CompletedProcess:
    """The CLI in a fresh process. ``inject``: Python run first (a fault to inject); ``prefix``: a
    command to run it under; ``env``: extra environment variables."""
    command = ["-c", f"{inject}\nimport sys\nfrom lychee_rerank.cli import main\nsys.exit(main(sys.argv[1:]))"]
    return subprocess.run(
        [*prefix, sys.executable, *(command if inject else ["-m", "lychee_rerank"]), *args],
        cwd=cwd or ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT), **env),
        capture_output=True,
        text=True,
        timeout=300,
    )


def read_csv(path: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))


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


def test_top_k_prints_only_the_best_rows_and_still_lists_errors(folder):
    result = run_cli("rank", "--model", "demo", "-q", "cat", str(folder), "--top", "1")
    assert result.returncode == 0, result.stderr
    rows = result.stdout.strip().splitlines()[1:]
    assert [row.split()[0] for row in rows] == ["1", "-"]
    assert "broken.jpg" in rows[1] and "corrupt" in rows[1]


# -- every input accounted for, whatever happens (issue 9) -------------------------------------------

NO_MODEL = "/nonexistent/model"  # loading it fails (exit 1): a check that exits 2 ran before the load


def ten_photos(folder: Path) -> Path:
    folder.mkdir()
    for i in range(10):
        (folder / f"p{i}.png").write_bytes(encode(photo(40 + 4 * i, 40, seed=i)))
    return folder


def corrupt_lzw_tiff() -> bytes:
    """A TIFF whose LZW data is garbage: libtiff complains on stderr by itself."""
    data = bytearray(encode(photo(32, 32, seed=1), "TIFF", compression="tiff_lzw"))
    data[8:40] = b"\xff" * 32
    return bytes(data)


def icon_of_another_size() -> bytes:
    """An icon whose directory says 32 x 32 around a 64 x 64 PNG: Pillow warns, then decodes it."""
    data = bytearray(encode(photo(64, 64, seed=2), "ICO", sizes=[(64, 64)]))
    data[6:8] = bytes([32, 32])
    return bytes(data)


def skipped_entries(stderr: str) -> dict[str, str]:
    """{path: reason} from the CLI's lines 'lychee-rerank: skipped N entries, REASON: PATH, PATH'."""
    entries = {}
    for line in stderr.splitlines():
        if match := re.match(r"lychee-rerank: skipped \d+ entr(?:y|ies), (.*)$", line):
            reason, paths = match[1].rsplit(": ", 1)
            entries.update((path, reason) for path in paths.split(", "))
    return entries


def test_a_folder_of_every_kind_of_trouble_exits_0_with_one_row_per_image_file(tmp_path):
    prefix = permission_enforcing_prefix()
    root = tmp_path / "trouble"
    root.mkdir()
    rows_expected = {  # file -> what its row must say (None: scored)
        "good.jpg": None,
        "strip-1000000x1.png": None,
        "strip-300000x1.png": None,
        "strip-20000000x1.png": None,
        "caf\\xe9.png": None,
        "icon.ico": None,
        "corrupt.ppm": "corrupt",
        "truncated.jpg": "corrupt",
        "empty.png": "empty",
        "text.jpg": "not an image",
        "garbled.tif": "corrupt",
        "photo.avif": None,
    }
    skips_expected = {
        "notes.txt": "not an image",
        "phone.heic": "format not supported (HEIC)",
        "pipe.jpg": "not a regular file (a named pipe)",
        "gone.jpg": "broken link: it points to nothing",
    }
    (root / "good.jpg").write_bytes(encode(photo(64, 48), "JPEG"))
    for width in (1_000_000, 300_000, 20_000_000):
        (root / f"strip-{width}x1.png").write_bytes(encode(Image.new("RGB", (width, 1), "blue")))
    (Path(os.fsdecode(os.path.join(os.fsencode(root), b"caf\xe9.png")))).write_bytes(encode(photo(30, 30)))
    (root / "icon.ico").write_bytes(icon_of_another_size())
    (root / "corrupt.ppm").write_bytes(b"P6\n5r 40\n255\n" + bytes(600))
    (root / "truncated.jpg").write_bytes(encode(photo(200, 200), "JPEG")[:600])
    (root / "empty.png").write_bytes(b"")
    (root / "text.jpg").write_text("这不是图片 not an image")
    (root / "garbled.tif").write_bytes(corrupt_lzw_tiff())
    if features.check_module("avif"):
        (root / "photo.avif").write_bytes(encode(photo(40, 30), "AVIF"))
    else:
        (root / "photo.avif").write_bytes(b"\0\0\0\x1cftypavif")
        del rows_expected["photo.avif"]
        skips_expected["photo.avif"] = "format not supported (AVIF)"
    (root / "notes.txt").write_text("not an image")
    (root / "phone.heic").write_bytes(b"\0\0\0\x18ftypheic")
    os.mkfifo(root / "pipe.jpg")
    (root / "gone.jpg").symlink_to(root / "deleted.jpg")
    if prefix is not None:  # permission bits can be made to deny a read here
        (root / "locked.png").write_bytes(encode(photo(20, 20)))
        (root / "locked.png").chmod(0)
        (root / "private").mkdir()
        (root / "private" / "hidden.png").write_bytes(encode(photo(20, 20)))
        (root / "private").chmod(0)
        rows_expected["locked.png"] = "permission denied"
        skips_expected["private"] = "folder cannot be read: permission denied"
    out_csv, out_json = tmp_path / "out.csv", tmp_path / "out.json"
    try:
        result = run_cli("rank", "--model", "demo", "-q", "a cat", "trouble", "--csv", str(out_csv),
                         "--json", str(out_json), cwd=tmp_path, prefix=prefix or ())
    finally:
        if prefix is not None:
            (root / "private").chmod(0o755)
    assert result.returncode == 0, result.stderr
    rows = {row["file"].removeprefix("trouble/"): row for row in read_csv(out_csv)}
    assert set(rows) == set(rows_expected)
    for name, problem in rows_expected.items():
        if problem is None:
            assert rows[name]["score"] and not rows[name]["error"], (name, rows[name]["error"])
        else:
            assert not rows[name]["score"] and problem in rows[name]["error"], (name, rows[name]["error"])
    assert len(json.loads(out_json.read_text(encoding="utf-8"))["results"]) == len(rows_expected)
    assert skipped_entries(result.stderr) == {f"trouble/{name}": reason for name, reason in skips_expected.items()}
    # Nothing reaches stderr without saying which file: no traceback, no library warning.
    for noise in ("Traceback", "Warning", "tempfile.tif"):
        assert noise not in result.stderr, result.stderr


def test_non_utf8_file_names_are_written_and_printed_even_on_an_ascii_terminal(tmp_path):
    folder = tmp_path / "archive"
    folder.mkdir()
    Path(os.fsdecode(os.path.join(os.fsencode(folder), b"caf\xe9.png"))).write_bytes(encode(photo(30, 30)))
    (folder / "海边.png").write_bytes(encode(photo(30, 20, seed=1)))
    out_csv, out_json = tmp_path / "out.csv", tmp_path / "out.json"
    result = run_cli("rank", "--model", "demo", "-q", "一只猫", "archive", "--csv", str(out_csv), "--json",
                     str(out_json), cwd=tmp_path, PYTHONIOENCODING="ascii:strict")
    assert result.returncode == 0, result.stderr
    rows = {row["file"]: row for row in read_csv(out_csv)}
    assert set(rows) == {"archive/caf\\xe9.png", "archive/海边.png"}
    assert bytes.fromhex(rows["archive/caf\\xe9.png"]["file_bytes"]) == b"archive/caf\xe9.png"
    assert {r["file"] for r in json.loads(out_json.read_text(encoding="utf-8"))["results"]} == set(rows)
    assert "archive/caf\\xe9.png" in result.stdout and "archive/\\u6d77\\u8fb9.png" in result.stdout


def test_a_fifo_named_on_the_command_line_gets_an_error_row(tmp_path):
    os.mkfifo(tmp_path / "pipe.jpg")
    (tmp_path / "ok.png").write_bytes(encode(photo(20, 20)))
    out_csv = tmp_path / "out.csv"
    result = run_cli("rank", "--model", "demo", "-q", "cat", "pipe.jpg", "ok.png", "--csv", str(out_csv), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = {row["file"]: row for row in read_csv(out_csv)}
    assert rows["pipe.jpg"]["error"] == "not a regular file (a named pipe)"
    assert rows["ok.png"]["score"]


def test_a_blank_query_with_a_query_image_ranks_by_the_image_alone(folder, tmp_path):
    query_image = tmp_path / "query.jpg"
    query_image.write_bytes(encode(photo(50, 50, seed=9), "JPEG"))
    result = run_cli("rank", "--model", "demo", "--query", " ", "--query-image", str(query_image), str(folder))
    assert result.returncode == 0, result.stderr
    assert "beach.jpg" in result.stdout


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--csv", "missing-folder/out.csv"], "cannot write --csv missing-folder/out.csv: the folder"),
        (["--json", "."], "cannot write --json .: is a folder"),
        (["--max-pixels", "100"], "max pixels (100) must be at least min pixels (3,136"),
        (["--query-image", "corrupt.jpg"], "the query image cannot be used: the image data is truncated or corrupt"),
        (["--query-image", "nowhere.jpg"], "the query image cannot be used: file not found"),
        (["-q", " "], "type a query (or give a query image)"),
        (["--csv", "same.out", "--json", "same.out"], "--csv and --json name the same file"),
    ],
)
def test_bad_outputs_settings_and_query_images_are_reported_before_the_model_loads(folder, tmp_path, flags, message):
    (tmp_path / "corrupt.jpg").write_bytes(encode(photo(100, 100), "JPEG")[:300])
    result = run_cli("rank", "--model", NO_MODEL, "-q", "cat", str(folder), *flags, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(f"lychee-rerank: {message}"), lines
    assert "Traceback" not in result.stderr and "model directory" not in result.stderr


def test_an_unwritable_csv_does_not_cost_the_json(folder, tmp_path):
    if not os.path.exists("/dev/full"):
        # Justified: /dev/full is the only portable way to make one write fail while the other
        # succeeds; it exists on every Linux host this project runs on (CI included, where it ran).
        pytest.skip("needs /dev/full, a file every write to fails")
    out_json = tmp_path / "out.json"
    result = run_cli("rank", "--model", "demo", "-q", "cat", str(folder), "--csv", "/dev/full", "--json", str(out_json))
    assert result.returncode == 1
    assert "could not write /dev/full: No space left on device" in result.stderr
    assert len(json.loads(out_json.read_text(encoding="utf-8"))["results"]) == 5
    assert "beach.jpg" in result.stdout


FAIL_ON_4TH_FORWARD = """
from lychee_rerank import scoring
forward, calls = scoring.PairScorer.forward, []
def failing(self, batch):
    calls.append(batch)
    if len(calls) == 4:
        raise RuntimeError("injected failure")
    return forward(self, batch)
scoring.PairScorer.forward = failing
"""


def test_an_error_in_the_4th_of_10_forwards_keeps_3_scores_writes_10_rows_and_exits_1(tmp_path):
    ten_photos(tmp_path / "ten")
    out_csv, out_json = tmp_path / "out.csv", tmp_path / "out.json"
    result = run_cli("rank", "--model", "demo", "-q", "cat", "ten", "--mode", "sequential", "--csv", str(out_csv),
                     "--json", str(out_json), cwd=tmp_path, inject=FAIL_ON_4TH_FORWARD)
    assert result.returncode == 1, result.stderr
    rows = read_csv(out_csv)
    assert len(rows) == 10 and sum(1 for row in rows if row["score"]) == 3
    assert result.stderr.strip().splitlines()[-1].startswith("lychee-rerank: the run stopped on an unexpected error:")
    assert "injected failure" in result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr
    data = json.loads(out_json.read_text(encoding="utf-8"))
    assert "injected failure" in data["error"] and len(data["results"]) == 10


ERROR_RECORDED_ON_THE_RANKING = """
import dataclasses
from lychee_rerank import ImageResult, Reranker
run = Reranker.run
def stopped_after_two(self, settings, images, **options):
    ranking = run(self, settings, images[:2], **options)
    pending = tuple(ImageResult(i, name) for i, name in enumerate(images) if i >= 2)
    return dataclasses.replace(ranking, results=ranking.results + pending, error="CUDA error: an illegal memory access")
Reranker.run = stopped_after_two
"""


def test_an_error_recorded_on_the_ranking_is_named_in_one_line_and_every_row_written(tmp_path):
    ten_photos(tmp_path / "ten")
    out_csv, out_json = tmp_path / "out.csv", tmp_path / "out.json"
    result = run_cli("rank", "--model", "demo", "-q", "cat", "ten", "--csv", str(out_csv), "--json", str(out_json),
                     cwd=tmp_path, inject=ERROR_RECORDED_ON_THE_RANKING)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "lychee-rerank: the run stopped on an unexpected error: CUDA error: an illegal memory access"
    )
    rows = read_csv(out_csv)
    assert len(rows) == 10 and sum(1 for row in rows if row["score"]) == 2
    data = json.loads(out_json.read_text(encoding="utf-8"))
    assert data["error"] == "CUDA error: an illegal memory access" and len(data["results"]) == 10


SIGNAL_ON_3RD_FORWARD = """
import os, signal
from lychee_rerank import scoring
forward, calls = scoring.PairScorer.forward, []
def signalling(self, batch):
    calls.append(batch)
    if len(calls) == 3:
        os.kill(os.getpid(), signal.{name})
    return forward(self, batch)
scoring.PairScorer.forward = signalling
"""


@pytest.mark.parametrize("name,code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_during_a_run_stops_it_and_writes_what_finished(tmp_path, name, code):
    ten_photos(tmp_path / "ten")
    out_csv = tmp_path / "out.csv"
    result = run_cli("rank", "--model", "demo", "-q", "cat", "ten", "--mode", "sequential", "--csv", str(out_csv),
                     cwd=tmp_path, inject=SIGNAL_ON_3RD_FORWARD.format(name=name))
    assert result.returncode == code, result.stderr
    rows = read_csv(out_csv)
    assert len(rows) == 10 and sum(1 for row in rows if row["score"]) == 3
    assert "stopped with 7 not scored" in result.stderr and "Traceback" not in result.stderr


SIGNAL_WHILE_LOADING = """
import os, signal, time
from lychee_rerank import Reranker
def slow_load(cls, *args, **kwargs):
    os.kill(os.getpid(), signal.{name})
    time.sleep(60)
Reranker.load = classmethod(slow_load)
"""


@pytest.mark.parametrize("name,code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_while_the_model_loads_exits_with_one_line(folder, name, code):
    result = run_cli("rank", "--model", "demo", "-q", "cat", str(folder), inject=SIGNAL_WHILE_LOADING.format(name=name))
    assert result.returncode == code
    assert result.stderr.strip().splitlines()[-1] == f"lychee-rerank: interrupted by {name} while loading the model"
    assert "Traceback" not in result.stderr


SECOND_SIGNAL_ON_3RD_FORWARD = """
import os, signal
from lychee_rerank import scoring
forward, calls = scoring.PairScorer.forward, []
def signalling_twice(self, batch):
    calls.append(batch)
    if len(calls) == 3:
        os.kill(os.getpid(), signal.SIGINT)  # stop after this forward...
        os.kill(os.getpid(), signal.SIGINT)  # ...no: stop now
    return forward(self, batch)
scoring.PairScorer.forward = signalling_twice
"""


def test_a_second_signal_stops_the_run_at_once_and_still_writes_what_finished(tmp_path):
    ten_photos(tmp_path / "ten")
    out_csv = tmp_path / "out.csv"
    result = run_cli("rank", "--model", "demo", "-q", "cat", "ten", "--mode", "sequential", "--csv", str(out_csv),
                     cwd=tmp_path, inject=SECOND_SIGNAL_ON_3RD_FORWARD)
    assert result.returncode == 130, result.stderr
    rows = read_csv(out_csv)
    assert len(rows) == 10 and sum(1 for row in rows if row["score"]) == 2
    assert "Traceback" not in result.stderr
