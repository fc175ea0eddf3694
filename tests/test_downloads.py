"""Large downloads served from disk by the app's own route (ui/downloads.py): the file is streamed,
named, never found by a wrong token, and deleted when its session prepares another or clears."""

from __future__ import annotations

import os
import zipfile

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from ui import downloads


@pytest.fixture
def client():
    with TestClient(Starlette(routes=[downloads.route()])) as test_client:
        yield test_client


def path_of(url: str) -> str:
    return downloads._files[url.rsplit("/", 1)[-1]].path


def test_a_prepared_zip_downloads_whole_under_its_name_as_an_attachment(client):
    def write(file):
        with zipfile.ZipFile(file, "w") as archive:
            archive.writestr("001_a.jpg", b"\xff\xd8" + os.urandom(300_000))

    url, size = downloads.prepare("session-1", "lychee-top-1.zip", write)
    response = client.get(url)
    assert response.status_code == 200 and len(response.content) == size
    assert response.headers["content-disposition"] == 'attachment; filename="lychee-top-1.zip"'
    assert response.headers["content-type"] == "application/zip"
    with open(path_of(url), "rb") as file:
        assert response.content == file.read()
    resumed = client.get(url, headers={"Range": "bytes=100-199"})  # a resumed download
    assert resumed.status_code == 206 and resumed.content == response.content[100:200]
    downloads.forget("session-1")


def test_a_wrong_or_forgotten_token_finds_nothing(client):
    url, _ = downloads.prepare("session-2", "x.zip", lambda file: file.write(b"PK"))
    assert client.get(url[:-1] + ("A" if url[-1] != "A" else "B")).status_code == 404
    kept = path_of(url)
    downloads.forget("session-2")  # Clear
    assert not os.path.exists(kept) and client.get(url).status_code == 404


def test_a_session_keeps_one_prepared_file_and_others_are_untouched(client):
    first, _ = downloads.prepare("session-3", "a.zip", lambda file: file.write(b"first"))
    other, _ = downloads.prepare("session-4", "b.zip", lambda file: file.write(b"other"))
    first_path = path_of(first)
    second, _ = downloads.prepare("session-3", "a.zip", lambda file: file.write(b"second"))
    assert not os.path.exists(first_path) and client.get(first).status_code == 404
    assert client.get(second).content == b"second" and client.get(other).content == b"other"
    downloads.forget("session-3")
    downloads.forget("session-4")


def test_an_expired_file_is_deleted_when_the_next_is_prepared(client, monkeypatch):
    old, _ = downloads.prepare("session-5", "old.zip", lambda file: file.write(b"old"))
    old_path = path_of(old)
    monkeypatch.setattr(downloads, "EXPIRY_S", -1)
    new, _ = downloads.prepare("session-6", "new.zip", lambda file: file.write(b"new"))
    assert not os.path.exists(old_path) and client.get(old).status_code == 404
    monkeypatch.undo()
    downloads.forget("session-6")


def test_a_failed_write_leaves_no_file_behind(client):
    folder = downloads._folder()
    before = set(os.listdir(folder))

    def failing(file):
        file.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        downloads.prepare("session-7", "x.zip", failing)
    assert set(os.listdir(folder)) == before
