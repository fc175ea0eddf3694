"""Server folders are confined where files are opened, not only where they are listed: a file swapped
for a link leading out of the data folder after the listing is never read — by scoring, thumbnails,
the viewer's download or the ZIP (issue 17, item 2)."""

from __future__ import annotations

import io
import os
import zipfile

import pytest

from imagegen import encode, photo
from lychee_rerank import archive
from lychee_rerank.confine import DataFile
from lychee_rerank.images import ImageError, load_image, probe_image
from lychee_rerank.results import ImageResult

# A private picture outside the data folder: decodable, so any path that followed the link would show it.
SECRET = encode(photo(50, 50, seed=99))


@pytest.fixture
def swapped(tmp_path):
    """A data folder listed with two photos; then ``b.png`` is replaced by a link to a file outside."""
    from ui.sources import scan

    root, outside = tmp_path / "data", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "a.png").write_bytes(encode(photo(40, 30, seed=1)))
    (root / "b.png").write_bytes(encode(photo(40, 30, seed=2)))
    secret = outside / "private.png"
    secret.write_bytes(SECRET)
    found = scan(root.resolve(), root.resolve())
    assert [item.name for item in found.items] == ["a.png", "b.png"]
    (root / "b.png").unlink()
    (root / "b.png").symlink_to(secret)  # swapped after the listing
    return found.items


def test_a_file_swapped_for_a_link_out_of_the_data_folder_is_never_opened(swapped):
    good, bad = swapped
    assert load_image(good.source).size == (40, 30)
    with pytest.raises(ImageError, match="outside the data folder"):
        bad.source.open()
    with pytest.raises(ImageError, match="outside the data folder"):
        probe_image(bad.source)
    with pytest.raises(ImageError, match="outside the data folder"):
        bad.source.read_bytes()  # the viewer's "original file" download
    assert bad.source.size() == 0


def test_scoring_gives_the_swapped_file_an_error_row_and_scores_the_rest(swapped, reranker):
    ranking = reranker.rank("a cat", [item.source for item in swapped], names=[item.name for item in swapped])
    good, bad = ranking.results
    assert good.status == "scored"
    assert bad.status == "error" and "outside the data folder" in bad.error


def test_the_zip_leaves_the_swapped_file_out_and_says_why(swapped):
    chosen = [ImageResult(i, item.name, score=0.5, rank=i + 1) for i, item in enumerate(swapped)]
    buffer = io.BytesIO()
    report = archive.write_zip(buffer, archive.entries(chosen, lambda r: swapped[r.index].source))
    assert report.written == 1 and [name for name, _ in report.skipped] == ["002_b.png"]
    data = buffer.getvalue()
    assert SECRET not in data
    with zipfile.ZipFile(io.BytesIO(data)) as zipped:
        assert zipped.namelist() == ["001_a.png", archive.SKIPPED_LIST]
        assert "002_b.png: the file now lies outside the data folder" in zipped.read(archive.SKIPPED_LIST).decode()


def test_thumbnails_of_the_swapped_file_show_nothing_of_it(swapped):
    from ui import media

    good, bad = swapped
    assert media.thumb(good) is not None
    assert media.thumb(bad) is None and media.full_view(bad) is None


def test_a_link_that_stays_inside_the_data_folder_is_read(tmp_path):
    root = tmp_path / "data"
    (root / "real").mkdir(parents=True)
    (root / "real" / "c.png").write_bytes(encode(photo(20, 20)))
    os.symlink(root / "real" / "c.png", root / "alias.png")
    source = DataFile.under(root, "alias.png")
    assert load_image(source).size == (20, 20)
