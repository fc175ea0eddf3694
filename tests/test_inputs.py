"""Finding images in folders: every entry is taken or reported with a reason, never left out silently."""

from __future__ import annotations

import os
import socket
import subprocess

import pytest
from PIL import features

from imagegen import encode, photo
from lychee_rerank.inputs import InputPathError, find_images


def test_every_entry_a_folder_does_not_contribute_is_reported_with_its_reason(tmp_path):
    root = tmp_path / "album"
    (root / "sub").mkdir(parents=True)
    (root / "a.jpg").write_bytes(encode(photo(10, 10), "JPEG"))
    (root / "sub" / "b.png").write_bytes(encode(photo(10, 10)))
    (root / "notes.txt").write_text("hello")
    (root / "phone.heic").write_bytes(b"\0\0\0\x18ftypheic")
    os.mkfifo(root / "pipe.jpg")
    (root / "null.png").symlink_to("/dev/null")
    (root / "gone.jpg").symlink_to(root / "deleted.jpg")
    (root / "loop").symlink_to(root)
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(root / "sock.png"))
        found = find_images([root])
    shown = lambda name: os.path.join(str(root), name)  # noqa: E731
    assert found.images == [shown("a.jpg"), shown(os.path.join("sub", "b.png"))]
    assert dict(found.skipped) == {
        shown("gone.jpg"): "broken link: it points to nothing",
        shown("loop"): "a link to a folder already searched",
        shown("notes.txt"): "not an image",
        shown("null.png"): "not a regular file (a device)",
        shown("phone.heic"): "format not supported (HEIC)",
        shown("pipe.jpg"): "not a regular file (a named pipe)",
        shown("sock.png"): "not a regular file (a socket)",
    }


def test_avif_is_an_image_when_this_pillow_reads_it(tmp_path):
    (tmp_path / "photo.avif").write_bytes(b"\0\0\0\x1cftypavif")
    found = find_images([tmp_path])
    if features.check_module("avif"):
        assert found.images == [str(tmp_path / "photo.avif")]
    else:
        assert found.skipped == [(str(tmp_path / "photo.avif"), "format not supported (AVIF)")]


def test_a_file_named_on_the_command_line_is_taken_whatever_it_is(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "dangling.jpg").symlink_to(tmp_path / "nothing")
    named = [str(tmp_path / "pipe"), str(tmp_path / "dangling.jpg")]
    assert find_images(named).images == named
    with pytest.raises(InputPathError, match="no such file or folder"):
        find_images([str(tmp_path / "missing.jpg")])


def test_a_linked_folder_is_searched_once(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "x.png").write_bytes(encode(photo(8, 8)))
    (tmp_path / "z-link").symlink_to(tmp_path / "real")
    found = find_images([tmp_path])
    assert found.images == [str(tmp_path / "real" / "x.png")]
    assert found.skipped == [(str(tmp_path / "z-link"), "a link to a folder already searched")]


@pytest.fixture
def deep(tmp_path):
    """A folder for trees too deep for Python's own removal (shutil.rmtree, which pytest's clean-up
    uses, recurses once per level): removed here with rm, which does not."""
    folder = tmp_path / "deep"
    folder.mkdir()
    yield folder
    subprocess.run(["rm", "-rf", "--", str(folder)], check=True)


def nested(root, depth: int, name: str = "d"):
    """A folder ``depth`` levels deep, made one level at a time (os.makedirs recurses per level)."""
    path = root
    for _ in range(depth):
        path = path / name
        path.mkdir()
    return path


def test_a_folder_nested_1100_deep_is_searched_without_recursion(deep):
    bottom = nested(deep, 1100)
    (bottom / "x.png").write_bytes(encode(photo(8, 8)))
    found = find_images([deep])
    assert found.images == [str(bottom / "x.png")]
    assert found.skipped == []


def test_a_path_longer_than_the_system_allows_is_a_skipped_entry(deep):
    """Past PATH_MAX (4,096 bytes on Linux) a folder cannot be listed by its path: one entry, one reason."""
    name = "n" * 200
    fd = os.open(deep, os.O_RDONLY)
    try:
        for _ in range(25):  # 25 x 201 characters: past PATH_MAX, made relative to an open folder
            os.mkdir(name, dir_fd=fd)
            inner = os.open(name, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = inner
    finally:
        os.close(fd)
    found = find_images([deep])
    assert found.images == []
    assert len(found.skipped) == 1
    path, reason = found.skipped[0]
    assert reason in ("folder cannot be read (File name too long)", "cannot be read (File name too long)"), reason


def test_a_link_sorted_before_its_target_leaves_the_real_folder_under_its_own_name(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "x.png").write_bytes(encode(photo(8, 8)))
    (tmp_path / "a-link").symlink_to(tmp_path / "real")  # "a-link" sorts before "real"
    found = find_images([tmp_path])
    assert found.images == [str(tmp_path / "real" / "x.png")]
    assert found.skipped == [(str(tmp_path / "a-link"), "a link to a folder already searched")]


def test_a_link_to_a_folder_searched_nowhere_else_is_searched_under_its_name(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "y.png").write_bytes(encode(photo(8, 8)))
    (tmp_path / "album").mkdir()
    (tmp_path / "album" / "link").symlink_to(elsewhere)
    assert find_images([tmp_path / "album"]).images == [str(tmp_path / "album" / "link" / "y.png")]


def test_a_link_loop_a_nul_byte_and_a_name_too_long_are_sentences(tmp_path):
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    assert find_images([tmp_path / "loop"]).images == [str(tmp_path / "loop")]  # named: its own error row
    found = find_images([tmp_path])
    assert found.skipped == [(str(tmp_path / "loop"), "cannot be read (Too many levels of symbolic links)")]
    with pytest.raises(InputPathError, match="contains a NUL byte"):
        find_images(["a\0b"])
    with pytest.raises(InputPathError, match=r"cannot be used \(File name too long\)"):
        find_images([str(tmp_path / ("x" * 5000))])


def test_confined_search_never_lists_what_a_link_leads_to_outside(tmp_path, monkeypatch):
    root, outside = tmp_path / "data", tmp_path / "private"
    (root / "photos").mkdir(parents=True)
    outside.mkdir()
    (outside / "salaries.png").write_bytes(encode(photo(8, 8)))
    (root / "photos" / "a.png").write_bytes(encode(photo(8, 8)))
    (root / "photos" / "linked").symlink_to(outside)
    (root / "photos" / "secret.png").symlink_to(outside / "salaries.png")
    (root / "photos" / "inside.png").symlink_to(root / "photos" / "a.png")
    listed = []
    real_scandir = os.scandir
    monkeypatch.setattr(os, "scandir", lambda path: listed.append(os.path.realpath(path)) or real_scandir(path))
    found = find_images([root / "photos"], confine_to=root)
    assert found.images == [str(root / "photos" / "a.png"), str(root / "photos" / "inside.png")]
    assert found.skipped == [
        (str(root / "photos" / "linked"), "a link to a folder outside the data folder"),
        (str(root / "photos" / "secret.png"), "a link to a file outside the data folder"),
    ]
    assert str(outside) not in listed


def test_the_cli_prints_one_line_for_a_deep_folder_without_images(deep, capsys):
    from lychee_rerank.cli import main

    nested(deep, 1100)
    assert main(["rank", "--query", "x", "--model", "demo", str(deep)]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"lychee-rerank: no images found in {deep}"]
