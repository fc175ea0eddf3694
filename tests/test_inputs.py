"""Finding images in folders: every entry is taken or reported with a reason, never left out silently."""

from __future__ import annotations

import os
import socket

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
