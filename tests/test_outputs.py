"""Outputs lose nothing (issue 17, items 1 and 6): full-precision scores, written atomically (a failed
write keeps the previous file), one file never named twice (links included), names that survive a
CSV round trip and never drive the terminal."""

from __future__ import annotations

import csv
import errno
import io
import json
import os

import pytest

from imagegen import encode, photo
from lychee_rerank.export import OutputError, to_csv, write_atomically
from lychee_rerank.results import ImageResult
from test_cli import NO_MODEL, run_cli

FULL_DISK = """
import errno, os
def full(fd):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
os.fsync = full
"""


def test_scores_are_written_at_full_precision_so_near_ties_keep_their_order():
    results = [ImageResult(0, "a.png", score=3.0e-7), ImageResult(1, "b.png", score=2.9e-7), ImageResult(2, "c.png", score=0.8442500233650208)]
    rows = list(csv.DictReader(io.StringIO(to_csv(results), newline="")))
    assert [float(row["score"]) for row in rows] == [0.8442500233650208, 3.0e-7, 2.9e-7]  # exact round trip
    assert [row["file"] for row in rows] == ["c.png", "a.png", "b.png"]


def test_a_carriage_return_in_a_file_name_survives_a_csv_round_trip():
    name = "scan\rpage 2.png"
    text = to_csv([ImageResult(0, name, score=0.5), ImageResult(1, "next.png", score=0.4)])
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    assert [row["file"] for row in rows] == [name, "next.png"]


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "ranking.csv"
    target.write_text("the previous ranking\n", encoding="utf-8")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OutputError, match="No space left on device .the previous file is unchanged"):
        write_atomically(target, "rank,file\n" * 1000)
    assert target.read_text(encoding="utf-8") == "the previous ranking\n"
    assert os.listdir(tmp_path) == ["ranking.csv"]


def test_writing_through_a_link_replaces_the_target_and_keeps_the_link(tmp_path):
    real = tmp_path / "real.csv"
    real.write_text("old", encoding="utf-8")
    real.chmod(0o640)
    link = tmp_path / "link.csv"
    link.symlink_to(real)
    write_atomically(link, "new")
    assert link.is_symlink() and real.read_text(encoding="utf-8") == "new"
    assert real.stat().st_mode & 0o777 == 0o640


def test_the_cli_on_a_full_disk_keeps_the_previous_ranking_and_says_so(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.png").write_bytes(encode(photo(40, 30)))
    out = tmp_path / "ranking.csv"
    out.write_text("the previous ranking\n", encoding="utf-8")
    result = run_cli("rank", "--model", "demo", "-q", "cat", "photos", "--csv", str(out), cwd=tmp_path, inject=FULL_DISK)
    assert result.returncode == 1
    assert f"could not write {out}: No space left on device (the previous file is unchanged)" in result.stderr
    assert out.read_text(encoding="utf-8") == "the previous ranking\n"
    assert sorted(os.listdir(tmp_path)) == ["photos", "ranking.csv"]


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_csv_and_json_naming_one_file_through_a_link_are_refused_before_the_model_loads(tmp_path, link):
    (tmp_path / "a.png").write_bytes(encode(photo(40, 30)))
    (tmp_path / "out.csv").write_text("", encoding="utf-8")
    if link == "symlink":
        (tmp_path / "out.json").symlink_to(tmp_path / "out.csv")
    else:
        os.link(tmp_path / "out.csv", tmp_path / "out.json")
    result = run_cli("rank", "--model", NO_MODEL, "-q", "cat", "a.png", "--csv", "out.csv", "--json", "out.json", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "lychee-rerank: --csv and --json name the same file"


def test_file_names_holding_terminal_escapes_are_printed_escaped_and_written_exactly(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    evil = "title\x1b]0;pwned\x07 clear\x1b[2J\rname.png"
    (folder / evil).write_bytes(encode(photo(40, 30)))
    (folder / "note\x1b[31m.txt").write_text("not an image")
    result = run_cli("rank", "--model", "demo", "-q", "cat", "photos", "--json", "out.json", "--csv", "out.csv", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert not {"\x1b", "\x07", "\r"} & set(result.stdout)
    assert not {"\x1b", "\x07"} & set(result.stderr)  # (the progress bar's own carriage returns aside)
    assert "title\\x1b]0;pwned\\x07 clear\\x1b[2J\\rname.png" in result.stdout
    assert "note\\x1b[31m.txt" in result.stderr  # the skipped entry, escaped too
    with open(tmp_path / "out.csv", newline="", encoding="utf-8") as file:
        assert [row["file"] for row in csv.DictReader(file)] == [f"photos/{evil}"]
    assert json.loads((tmp_path / "out.json").read_text(encoding="utf-8"))["results"][0]["file"] == f"photos/{evil}"
