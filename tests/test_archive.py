"""ZIP export of the original files of a ranking (lychee_rerank.archive)."""

from __future__ import annotations

import io
import tracemalloc
import zipfile

from lychee_rerank.archive import entries, entry_names, source_size, write_zip
from lychee_rerank.results import ImageResult


def result(rank, name, index=0):
    return ImageResult(index, name, score=0.5, rank=rank)


def test_names_carry_the_rank_zero_padded_and_the_files_own_name():
    names = entry_names([result(1, "photos/2024/sunset.jpg"), result(2, "b.png"), result(10, "C:\\scans\\doc.tif")])
    assert names == ["001_sunset.jpg", "002_b.png", "010_doc.tif"]
    assert sorted(names) == names  # the archive lists them in rank order
    wide = entry_names([result(1234, "x.jpg")])
    assert wide == ["1234_x.jpg"]


def test_names_are_unique_even_for_the_same_name_and_rank():
    names = entry_names([result(1, "a/x.JPG"), result(1, "b/x.jpg"), result(1, "c/X.jpg")])
    assert len({n.lower() for n in names}) == 3
    assert names == ["001_x.JPG", "001_x-2.jpg", "001_X-3.jpg"]


def test_names_cannot_escape_the_folder_they_are_unpacked_in():
    names = entry_names([result(1, "../../etc/passwd"), result(2, ".."), result(3, 'a<b>:"c|?*\x07.png'), result(4, "")])
    assert names[0] == "001_passwd"
    assert names[1] == "002_image"
    assert names[2] == "003_a_b___c____.png"
    assert names[3] == "004_image"
    assert not any("/" in n or "\\" in n for n in names)


def test_zip_holds_the_original_bytes_of_files_and_uploads(tmp_path):
    on_disk = tmp_path / "photo.jpg"
    on_disk.write_bytes(b"\xff\xd8jpeg bytes" * 1000)
    upload = b"BM" + bytes(range(256)) * 40
    ranked = [result(1, "photo.jpg", 0), result(2, "scan.bmp", 1)]
    sources = {0: on_disk, 1: upload}

    buffer = io.BytesIO()
    report = write_zip(buffer, entries(ranked, lambda r: sources[r.index]))
    assert report.written == 2 and not report.skipped
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as archive:
        assert archive.namelist() == ["001_photo.jpg", "002_scan.bmp"]
        assert archive.read("001_photo.jpg") == on_disk.read_bytes()
        assert archive.read("002_scan.bmp") == upload
        # JPEG is stored as is; an uncompressed format is deflated
        assert archive.getinfo("001_photo.jpg").compress_type == zipfile.ZIP_STORED
        assert archive.getinfo("002_scan.bmp").compress_type == zipfile.ZIP_DEFLATED
        assert archive.testzip() is None
    assert source_size(on_disk) == on_disk.stat().st_size and source_size(upload) == len(upload)


def test_a_large_file_is_streamed_not_read_whole(tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG" + b"\x00" * (40 << 20))  # 40 MB
    with open(tmp_path / "out.zip", "wb") as out:
        tracemalloc.start()
        write_zip(out, entries([result(1, "big.png")], lambda r: big))
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < 8 << 20, f"peak Python allocation {peak / 1e6:.1f} MB for a 40 MB file"
    with zipfile.ZipFile(tmp_path / "out.zip") as archive:
        assert archive.getinfo("001_big.png").file_size == big.stat().st_size


def test_a_file_removed_before_the_zip_is_listed_inside_it_and_the_rest_is_kept(tmp_path):
    kept, gone = tmp_path / "kept.jpg", tmp_path / "gone.jpg"
    kept.write_bytes(b"\xff\xd8kept")
    buffer = io.BytesIO()
    report = write_zip(buffer, entries([result(1, "kept.jpg", 0), result(2, "gone.jpg", 1)], lambda r: [kept, gone][r.index]))
    assert report.written == 1 and report.skipped[0][0] == "002_gone.jpg"
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as archive:
        assert archive.read("001_kept.jpg") == b"\xff\xd8kept"
        assert "002_gone.jpg: the file cannot be read" in archive.read("NOT_INCLUDED.txt").decode()
