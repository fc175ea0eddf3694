"""The Streamlit app, driven headlessly with streamlit.testing's AppTest against the demo model (CPU, offline).

The ranking runs in a background thread (ui/state.Run); a test clicks Rank, runs the script once
(which starts the run), waits for the thread, and runs the script again to see the results, as the
page's live fragment would.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import re
import subprocess
import threading
import time
import zipfile
from pathlib import Path
from unittest.mock import patch

import pytest
import streamlit as st
from PIL import Image
from streamlit.proto.Common_pb2 import FileURLs
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
from streamlit.runtime.uploaded_file_manager import UploadedFile, UploadedFileRec
from streamlit.testing.v1 import AppTest

from app_fixtures import encode, scene
from lychee_rerank import ImageResult, Progress, Ranking, Reranker, RunSettings, gpu, ranked
from lychee_rerank.confine import DataFile
from lychee_rerank.gpu import GpuReading
from ui import media, sources
from ui import model as model_ui
from ui import results as results_ui
from ui import state as run_state
from ui.state import Item, Run

ROOT = Path(__file__).resolve().parent.parent
QUERY = "海边日落 sunset over the sea"
CARD = re.compile(r"\*\*#(\d+)\*\* · score ([0-9.]+)")


@pytest.fixture
def downloads(monkeypatch):
    """Every payload handed to Streamlit's media storage (download buttons), by file name."""
    captured: dict[str, bytes] = {}
    original = MemoryMediaFileStorage.load_and_get_id

    def record(self, path_or_data, mimetype, kind, filename=None):
        if filename and isinstance(path_or_data, (bytes, bytearray)):
            captured[filename] = bytes(path_or_data)
        return original(self, path_or_data, mimetype, kind, filename)

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", record)
    return captured


@pytest.fixture
def rank_calls(monkeypatch):
    """Reranker.run, wrapped to record how many images each call was given."""
    calls: list[int] = []
    original = Reranker.run

    def counting(self, settings, images, **kwargs):
        calls.append(len(images))
        return original(self, settings, images, **kwargs)

    monkeypatch.setattr(Reranker, "run", counting)
    return calls


def photos(count: int) -> list[tuple[str, bytes, str]]:
    return [(f"photo_{i}.png", encode(scene(i, 96 + 16 * i, 72)), "image/png") for i in range(count)]


def wait_for_run(at: AppTest) -> None:
    """Let the background run finish, then redraw the page (what the live fragment does)."""
    run = at.session_state["run"]
    assert run.wait(timeout=60), "the ranking run did not finish in 60 s"
    at.run()
    assert not at.exception


def rank(at: AppTest, files, query: str = QUERY) -> None:
    at.text_input(key="query").set_value(query)
    at.file_uploader(key="files_upload").set_value(files)
    at.run()
    at.button(key="rank_button").click().run()
    assert not at.exception
    wait_for_run(at)


def unescape(markdown: str) -> str:
    return re.sub(r"\\(.)", r"\1", markdown)


def cards(at: AppTest) -> list[tuple[int, float, str]]:
    """Gallery cards in page order: (rank, score, file name). The name is the button opening the viewer:
    the file's own name, with its folder in the tooltip when it has one."""
    scores = [(int(m[1]), float(m[2])) for m in (CARD.fullmatch(md.value) for md in at.markdown) if m]
    names = [unescape(b.help or b.label) for b in at.button if b.key and b.key.startswith("view_")]
    return [(r, s, n) for (r, s), n in zip(scores, names)]


def table_with(at: AppTest, column: str):
    """The st.dataframe holding ``column`` (the results table has 'preview', the errors table 'error')."""
    return next(df.value for df in at.dataframe if column in df.value.columns)


def csv_rows(downloads) -> list[dict]:
    text = downloads["lychee-ranking.csv"].decode("utf-8")
    assert text.startswith("rank,file,score,error")
    return list(csv.DictReader(io.StringIO(text)))


def test_rank_three_images_gallery_table_and_csv(app, downloads, rank_calls):
    rank(app, photos(3))
    assert rank_calls == [3]
    run = app.session_state["run"]
    scores = {r.name: r.score for r in run.results}
    assert all(r.status == "scored" for r in run.results)

    gallery = cards(app)
    assert [r for r, _, _ in gallery] == [1, 2, 3]
    assert [n for _, _, n in gallery] == sorted(scores, key=lambda n: -scores[n])
    assert [s for _, s, _ in gallery] == sorted((s for _, s, _ in gallery), reverse=True)
    for _, shown, name in gallery:
        assert shown == pytest.approx(scores[name], abs=5e-5)
    assert any("Demo model in use" in w.value for w in app.warning)  # banner on the page
    assert any("random weights" in w.value for w in app.warning)  # and next to the results

    rows = csv_rows(downloads)
    assert [row["file"] for row in rows] == [n for _, _, n in gallery]
    assert [row["rank"] for row in rows] == ["1", "2", "3"]
    assert [float(row["score"]) for row in rows] == sorted((float(r["score"]) for r in rows), reverse=True)
    assert '"demo_model": true' in downloads["lychee-ranking.json"].decode("utf-8")  # the CLI's schema

    app.segmented_control(key="view_as__en").set_value("table").run()
    table = table_with(app, "preview")
    assert list(table["file"]) == [n for _, _, n in gallery]
    assert list(table["rank"]) == [1, 2, 3]
    assert all(str(uri).startswith("data:image/jpeg;base64,") for uri in table["preview"])
    # the file's own size (photo_i is 96+16i × 72), the model's input size in a column of its own
    assert dict(zip(table["file"], table["size"])) == {f"photo_{i}.png": f"{96 + 16 * i}×72" for i in range(3)}
    assert "model_size" in table.columns
    assert [row["width"] for row in sorted(rows, key=lambda r: r["file"])] == ["96", "112", "128"]
    assert rank_calls == [3]  # switching the view scored nothing again


def test_broken_file_gets_an_error_row_and_the_rest_is_ranked(app, downloads):
    files = photos(3) + [("broken.png", b"this is not an image", "image/png")]
    rank(app, files)
    assert len(cards(app)) == 3
    errors = table_with(app, "error")
    assert list(errors["file"]) == ["broken.png"]
    assert "not an image" in errors["error"][0]
    rows = csv_rows(downloads)
    assert [row["rank"] for row in rows] == ["1", "2", "3", ""]
    assert rows[-1]["file"] == "broken.png" and rows[-1]["error"]
    assert any("1 could not be read" in c.value for c in app.caption)


def test_filters_do_not_rescore(app, rank_calls):
    rank(app, photos(4))
    before = [r.score for r in app.session_state["run"].results]
    all_cards = cards(app)
    assert len(all_cards) == 4

    app.number_input(key="top_k").set_value(2).run()
    assert [c[2] for c in cards(app)] == [c[2] for c in all_cards[:2]]
    app.number_input(key="top_k").set_value(0)
    app.slider(key="min_score").set_value(max(before)).run()  # only the best one passes
    assert [c[2] for c in cards(app)] == [all_cards[0][2]]
    assert any(c.value == "Showing 1 of 4 scored images." for c in app.caption)

    assert rank_calls == [4]
    assert [r.score for r in app.session_state["run"].results] == before


def test_stop_keeps_results_and_resume_ranks_only_the_rest(app, monkeypatch, rank_calls):
    original = Reranker.run  # rank_calls' counting wrapper

    def stop_after_first_image(self, settings, images, **kwargs):
        if len(rank_calls) == 0:  # the first run: press Stop once the first image is done
            progress, seen = kwargs["progress"], []

            def spy(event):
                progress(event)
                seen.extend(event.new_results)

            kwargs["progress"], kwargs["should_stop"] = spy, lambda: bool(seen)
        return original(self, settings, images, **kwargs)

    monkeypatch.setattr(Reranker, "run", stop_after_first_image)
    app.radio(key="mode__en").set_value("sequential").run()
    rank(app, photos(3))
    run = app.session_state["run"]
    assert run.status == "stopped"
    assert [r.status for r in run.results].count("scored") == 1
    assert any("Stopped: 1 of 3 images scored" in i.value for i in app.info)
    assert len(cards(app)) == 1

    app.button(key="resume_button").click().run()
    wait_for_run(app)
    assert rank_calls == [3, 2]  # the resume was given only the two images not scored yet
    run = app.session_state["run"]
    assert [r.status for r in run.results] == ["scored"] * 3
    assert [r.index for r in run.results] == [0, 1, 2]
    assert [r.name for r in run.results] == [f"photo_{i}.png" for i in range(3)]
    assert len(cards(app)) == 3
    assert not any(b.key == "resume_button" for b in app.button)


def test_changed_query_marks_results_as_previous(app, rank_calls):
    rank(app, photos(2))
    app.text_input(key="query").set_value("a red product shot").run()
    stale = [w.value for w in app.warning if "previous query" in w.value]
    assert stale and "the query" in stale[0] and "sunset" in stale[0]
    assert len(cards(app)) == 2  # still shown, under the banner
    assert not any(b.key == "resume_button" for b in app.button)  # never mixed with a new query
    assert rank_calls == [2]


def test_added_files_keep_their_scores_and_resume_ranks_the_new_ones(app, rank_calls):
    files = photos(3)
    rank(app, files[:2])
    first = {r.name: r.score for r in app.session_state["run"].results}
    app.file_uploader(key="files_upload").set_value(files).run()
    assert any("1 images are not scored yet" in i.value for i in app.info)
    app.button(key="resume_button").click().run()
    wait_for_run(app)
    assert rank_calls == [2, 1]
    results = {r.name: r.score for r in app.session_state["run"].results}
    assert {k: results[k] for k in first} == first
    assert results["photo_2.png"] is not None


def test_missing_query_and_missing_files_are_sentences(app, rank_calls):
    app.button(key="rank_button").click().run()
    assert any("Upload some images first" in w.value for w in app.warning)
    app.file_uploader(key="files_upload").set_value(photos(1)).run()
    app.button(key="rank_button").click().run()
    assert any("Type a query" in w.value for w in app.warning)
    assert rank_calls == [] and not app.exception


def test_a_failing_run_is_one_sentence(app, monkeypatch):
    def explode(self, *args, **kwargs):
        raise RuntimeError("CUDA error: device-side assert triggered\nTraceback (most recent call last): ...")

    monkeypatch.setattr(Reranker, "run", explode)
    rank(app, photos(2))
    errors = [e.value for e in app.error]
    assert errors == ["The run failed: CUDA error: device-side assert triggered."]
    assert not app.exception


def test_file_names_are_shown_as_text(app):
    name = "[click](javascript:alert(1)) <img src=x onerror=alert(2)> *$x$*.png"
    rank(app, [(name, encode(scene(1)), "image/png")])
    label = next(b.label for b in app.button if b.key == "view_0")
    assert "\\[click\\]\\(javascript\\:alert\\(1\\)\\)" in label
    assert "\\<img" in label and "\\$x\\$" in label and "\\*" in label
    assert unescape(label) == name
    sources = [ROOT / "app.py", *ROOT.glob("pages/*.py"), *ROOT.glob("ui/*.py")]
    assert not any("unsafe_allow_html=True" in p.read_text() for p in sources)


def test_language_switch_and_browser_locale(app, demo_cache):
    app.radio(key="lang_choice").set_value("zh").run()
    assert app.title[0].value == "图像重排序"
    assert app.text_input(key="query").label == "查询"
    assert app.button(key="rank_button").label == "开始排序"
    assert not app.exception

    app.radio(key="lang_choice").set_value("en").run()
    assert app.text_input(key="query").label == "Query"
    assert "Rank" in app.button(key="rank_button").label

    chinese_browser = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    chinese_browser.context = {"locale": "zh-CN"}
    chinese_browser.run()
    assert chinese_browser.title[0].value == "图像重排序"


def test_inputs_and_results_survive_language_and_page_switches(app, rank_calls):
    app.radio(key="tokens__en").set_value(256).run()
    rank(app, photos(2))
    app.radio(key="lang_choice").set_value("zh").run()
    assert app.radio(key="tokens__zh").value == 256
    app.switch_page("pages/gpu_monitor.py").run()
    app.switch_page("pages/rerank.py").run()
    assert not app.exception
    assert app.session_state["tokens"] == 256
    assert app.text_input(key="query").value == QUERY
    assert any("保留了之前上传的 2 张图片" in c.value for c in app.caption)  # the uploads are kept
    assert not any("之前的查询" in w.value for w in app.warning)  # and the results still current
    assert len([m for m in app.markdown if m.value.startswith("**#")]) == 2
    assert rank_calls == [2]


def test_gpu_monitor_cpu_only_state(app, monkeypatch):
    monkeypatch.setattr(gpu, "gpu_readings", lambda: [])
    app.switch_page("pages/gpu_monitor.py").run()
    assert not app.exception
    assert app.title[0].value == "GPU monitor"
    assert any("No NVIDIA GPU detected — running on CPU" in i.value for i in app.info)
    labels = [m.label for m in app.metric]
    assert "Process memory (RSS)" in labels and "System memory used" in labels
    app.radio(key="lang_choice").set_value("zh").run()
    assert any("未检测到 NVIDIA GPU" in i.value for i in app.info)


def test_gpu_monitor_warns_at_high_memory_and_frees_cache(app, monkeypatch):
    reading = GpuReading(0, "NVIDIA H100 80GB HBM3", 72 * 10**9, 80 * 10**9, 97, 64, 60 * 10**9, 70 * 10**9, 66 * 10**9)
    freed: list[int] = []
    monkeypatch.setattr(gpu, "gpu_readings", lambda: [reading])
    monkeypatch.setattr(gpu, "free_cached_memory", lambda: freed.append(1) or 3 * 10**9)
    app.switch_page("pages/gpu_monitor.py").run()
    assert not app.exception
    assert any("90%" in w.value for w in app.warning)
    assert {"VRAM used", "Utilisation", "Temperature", "Torch allocated", "Torch reserved"} <= {m.label for m in app.metric}
    app.button(key="free_cached_0").click().run()
    assert freed == [1]
    assert any("Freed 3.0 GB" in s.value for s in app.success)


def test_model_that_cannot_load_offers_the_demo(app, monkeypatch):
    monkeypatch.setenv("LYCHEE_MODEL", "/nonexistent/lychee-model")
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.run()
    assert not at.exception
    message = at.error[0].value
    assert message.startswith("The model could not be loaded.") and "/nonexistent/lychee-model" in message
    assert "Traceback" not in message
    assert at.button(key="rank_button").disabled
    at.button(key="page_use_demo").click().run()
    assert not at.error and any("Demo model in use" in w.value for w in at.warning)
    assert not at.button(key="rank_button").disabled


def test_query_image_alone_ranks(app, rank_calls):
    app.file_uploader(key="query_image_upload").set_value(("query.png", encode(scene(0)), "image/png")).run()
    assert any(i.captions == ["Query image"] for i in app.image)  # previewed as soon as it is uploaded
    rank(app, photos(2), query="")
    assert rank_calls == [2] and len(cards(app)) == 2


def test_a_broken_query_image_is_a_sentence_at_upload_and_keeps_the_results(app, rank_calls):
    rank(app, photos(2))
    before = app.session_state["run"]
    app.file_uploader(key="query_image_upload").set_value(("query.png", b"garbage", "image/png")).run()
    errors = [e.value for e in app.error]
    assert errors == ["This query image cannot be used: Not an image, or an image format that cannot be read. "
                      "Upload another one, or remove it."]
    app.button(key="rank_button").click().run()
    assert any("The query image cannot be used" in w.value for w in app.warning)
    assert app.session_state["run"] is before and len(cards(app)) == 2  # the results are still there
    assert not any(b.key == "resume_button" for b in app.button)
    assert rank_calls == [2] and not app.exception


def test_a_run_waits_for_another_session_on_the_same_model(reranker):
    """Two tabs share one cached model: the second run says it is waiting, then proceeds."""
    gate, holding = threading.Event(), threading.Event()

    def hold(_event):
        holding.set()
        gate.wait(10)

    other_tab = threading.Thread(target=reranker.rank, args=("x", [encode(scene(0))]), kwargs={"progress": hold})
    other_tab.start()
    try:
        assert holding.wait(10)
        run = Run(reranker.settings(QUERY), [Item("a.png", "digest-a", encode(scene(1)))])
        run.start(reranker)
        deadline = time.monotonic() + 10
        while not run.waiting and time.monotonic() < deadline:
            time.sleep(0.02)
        assert run.running and run.waiting
    finally:
        gate.set()
        other_tab.join(10)
    assert run.wait(30)
    assert run.status == "done" and not run.waiting and run.results[0].status == "scored"


def test_live_panel_shows_waiting_progress_stop_and_memory(app, reranker, monkeypatch):
    """While another tab holds the model, the page shows the queued run with a Stop button and the
    memory readout; Stop ends the wait and keeps the images for Resume."""
    gate, holding = threading.Event(), threading.Event()

    def hold(_event):
        holding.set()
        gate.wait(10)

    monkeypatch.setattr(gpu, "gpu_readings", lambda: [])
    # the app must use the very model the other tab holds
    monkeypatch.setattr(model_ui, "_load", lambda name, dtype, quantize: model_ui.LoadOutcome(name, dtype, reranker=reranker))
    other_tab = threading.Thread(target=reranker.rank, args=("x", [encode(scene(0))]), kwargs={"progress": hold})
    other_tab.start()
    try:
        assert holding.wait(10)
        app.text_input(key="query").set_value(QUERY)
        app.file_uploader(key="files_upload").set_value(photos(2))
        app.button(key="rank_button").click().run()
        run = app.session_state["run"]
        deadline = time.monotonic() + 10
        while not run.waiting and time.monotonic() < deadline:
            time.sleep(0.02)
        app.run()  # what the live fragment shows a second later
        assert run.running, (run.status, run.error)
        assert app.get("progress")[0].text.startswith("Waiting for")  # the place: see the queue test below
        assert app.button(key="rank_button").disabled
        assert any("No NVIDIA GPU — running on CPU" in c.value for c in app.caption)
        app.button(key="stop_button").click().run()
        assert run.wait(10) and run.status == "stopped"
    finally:
        gate.set()
        other_tab.join(10)
    app.run()
    assert any("Stopped: 0 of 2 images scored" in i.value for i in app.info)
    assert app.button(key="resume_button").label == "Resume: rank the 2 not scored yet"


# -- server folders ---------------------------------------------------------------------------------
@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    """$LYCHEE_DATA_DIR with photos/ (3 images, one in a subfolder, a text file) and a link leading out."""
    root = tmp_path / "data"
    photos_dir = root / "photos"
    (photos_dir / "2024").mkdir(parents=True)
    for i, path in enumerate([photos_dir / "a.png", photos_dir / "b.jpg", photos_dir / "2024" / "c.webp"]):
        path.write_bytes(encode(scene(i), {".png": "PNG", ".jpg": "JPEG", ".webp": "WEBP"}[path.suffix]))
    (photos_dir / "notes.txt").write_text("not a picture")
    outside = tmp_path / "private.png"
    outside.write_bytes(encode(scene(5)))
    (photos_dir / "link.png").symlink_to(outside)
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "salaries.png").write_bytes(encode(scene(6)))
    (secret / "passwords.txt").write_text("x")
    (photos_dir / "linked").symlink_to(secret, target_is_directory=True)
    monkeypatch.setenv("LYCHEE_DATA_DIR", str(root))
    return root


def use_server_folder(at: AppTest, folder: str) -> None:
    """Choose a folder in the picker: one it offers, or a path typed (the browser then sends the
    typed text as the value; AppTest only sends values among the options, so it is added to them)."""
    at.radio(key="upload_source__en").set_value("server").run()
    picker = at.selectbox(key="server_folder")
    if picker.format_func(folder) not in picker.options:
        picker.options.append(picker.format_func(folder))
    picker.set_value(folder).run()
    assert not at.exception


def test_server_folder_is_ranked_from_disk_without_upload(data_dir, app, downloads, rank_calls):
    app.run()
    use_server_folder(app, "photos")
    assert any(c.value.startswith("3 images found in photos") for c in app.caption)
    skipped = next(df.value for df in app.dataframe if "Why" in df.value.columns)
    reasons = dict(zip(skipped["File"], skipped["Why"]))
    assert reasons["photos/notes.txt"] == "not an image"
    assert reasons["photos/link.png"] == "a link to a file outside the data folder"
    assert not [name for name in reasons if "salaries" in name or "passwords" in name]  # not even listed

    app.text_input(key="query").set_value(QUERY)
    app.button(key="rank_button").click().run()
    wait_for_run(app)
    run = app.session_state["run"]
    assert rank_calls == [3]
    # nothing copied into the session: every image is a file inside the data folder, checked where opened
    assert all(isinstance(item.source, DataFile) and item.source.path.startswith(str(data_dir)) for item in run.items)
    assert sorted(n for _, _, n in cards(app)) == ["photos/2024/c.webp", "photos/a.png", "photos/b.jpg"]
    assert sorted(row["file"] for row in csv_rows(downloads)) == ["photos/2024/c.webp", "photos/a.png", "photos/b.jpg"]


def test_a_link_to_a_folder_outside_is_one_skipped_entry_and_is_never_listed(data_dir, monkeypatch):
    """A link leading out of the data folder is one skipped entry: the folder behind it is never even
    listed (the walk is confined to the data folder)."""
    listed = []
    real_scandir = os.scandir
    monkeypatch.setattr(os, "scandir", lambda path: listed.append(os.path.realpath(path)) or real_scandir(path))
    found = sources.scan(data_dir / "photos", data_dir)
    assert sorted(item.name for item in found.items) == ["photos/2024/c.webp", "photos/a.png", "photos/b.jpg"]
    assert ("photos/linked", "a link to a folder outside the data folder") in found.skipped
    assert not [path for path in listed if "secret" in path]


def test_server_folder_accepts_an_absolute_path_and_rescans(data_dir, app):
    app.run()
    use_server_folder(app, str(data_dir / "photos" / "2024"))
    assert any(unescape(c.value).startswith("1 images found in photos/2024") for c in app.caption)
    (data_dir / "photos" / "2024" / "d.png").write_bytes(encode(scene(7)))
    app.button(key="rescan").click().run()
    assert any(unescape(c.value).startswith("2 images found in photos/2024") for c in app.caption)


@pytest.mark.parametrize(
    ("typed", "message"),
    [
        ("../", "is outside the data folder"),
        ("/etc", "is outside the data folder"),
        ("photos/../../", "is outside the data folder"),
        ("missing", "There is no folder missing in"),
        ("photos/a.png", "The path photos/a.png is a file, not a folder."),
    ],
)
def test_server_folder_outside_the_data_folder_or_missing_is_one_sentence(data_dir, app, rank_calls, typed, message):
    app.run()
    use_server_folder(app, typed)
    errors = [unescape(e.value) for e in app.error]  # names are escaped: they reach the page as text
    assert len(errors) == 1 and message in errors[0] and errors[0].endswith((".", "?"))
    app.text_input(key="query").set_value(QUERY)
    app.button(key="rank_button").click().run()
    assert any("Choose a folder with images first" in w.value for w in app.warning)
    assert rank_calls == []


@pytest.fixture
def deep_folder(data_dir):
    """photos/deep/d/d/...: 1,100 levels, one image at the bottom; removed with rm (shutil.rmtree,
    which pytest's clean-up uses, recurses once per level)."""
    path = top = data_dir / "photos" / "deep"
    top.mkdir()
    for _ in range(1100):
        path = path / "d"
        path.mkdir()
    (path / "bottom.png").write_bytes(encode(scene(3)))
    yield top
    subprocess.run(["rm", "-rf", "--", str(top)], check=True)


@pytest.mark.parametrize(
    ("typed", "message"),
    [
        ("loop", "The folder loop is a link that leads back to itself (a loop)."),
        ("a\0b", "A folder name cannot contain a NUL byte."),
        ("x" * 5000, "This name is too long for the server's file system (5000 characters)."),
    ],
    ids=["link loop", "NUL byte", "5000 characters"],
)
def test_the_folder_box_answers_what_the_file_system_refuses_in_one_sentence(data_dir, app, typed, message):
    (data_dir / "loop").symlink_to(data_dir / "loop")
    app.run()
    use_server_folder(app, typed)
    assert [unescape(e.value) for e in app.error] == [message]
    app.run()  # and the next run too: never Streamlit's "This app has encountered an error"
    assert not app.exception and [unescape(e.value) for e in app.error] == [message]


def test_a_folder_nested_1100_deep_is_listed(data_dir, deep_folder, app):
    app.run()
    use_server_folder(app, "photos/deep")
    assert not app.error
    assert any(c.value.startswith("1 images found in photos") for c in app.caption)


def test_a_data_subfolder_named_tilde_is_a_folder_not_a_home(data_dir, app):
    (data_dir / "~").mkdir()
    (data_dir / "~" / "x.png").write_bytes(encode(scene(2)))
    app.run()
    use_server_folder(app, "~")
    assert not app.error
    assert any(unescape(c.value).startswith("1 images found in ~") for c in app.caption)


def test_a_link_sorted_before_its_target_leaves_the_real_names(data_dir, app):
    (data_dir / "a-link").symlink_to(data_dir / "photos", target_is_directory=True)  # sorts before "photos"
    app.run()
    use_server_folder(app, ".")
    found = app.session_state["server_images"]["found"]
    assert sorted(item.name for item in found.items) == ["photos/2024/c.webp", "photos/a.png", "photos/b.jpg"]
    assert ("a-link", "a link to a folder already searched") in found.skipped


def test_the_data_folders_are_offered_with_the_images_under_each(data_dir, app):
    (data_dir / "empty").mkdir()
    (data_dir / ".hidden").mkdir()
    app.run()
    app.radio(key="upload_source__en").set_value("server").run()
    assert app.selectbox(key="server_folder").options == [
        "(the whole data folder) · 3 images", "empty · 0 images", "photos · 3 images", "photos/2024 · 1 images",
    ]
    app.selectbox(key="server_folder").set_value("photos/2024").run()
    assert any(unescape(c.value).startswith("1 images found in photos/2024") for c in app.caption)


def test_a_mistyped_or_empty_folder_says_so_and_suggests_the_nearest_names(data_dir, app, rank_calls):
    (data_dir / "empty").mkdir()
    app.run()
    use_server_folder(app, "photo")
    assert [unescape(e.value) for e in app.error] == [f"There is no folder photo in {data_dir}. Did you mean photos?"]
    use_server_folder(app, "photos/2O24")
    assert "Did you mean photos/2024" in unescape(app.error[0].value)  # the closest first
    use_server_folder(app, "empty")
    assert [unescape(e.value) for e in app.error] == ["There are no images in empty."]
    app.text_input(key="query").set_value(QUERY)
    app.button(key="rank_button").click().run()
    assert any("Choose a folder with images first" in w.value for w in app.warning) and rank_calls == []


def test_a_scored_server_file_deleted_before_the_zip_is_named_on_the_page(data_dir, app):
    app.run()
    use_server_folder(app, "photos")
    app.text_input(key="query").set_value(QUERY)
    app.button(key="rank_button").click().run()
    wait_for_run(app)
    (data_dir / "photos" / "b.jpg").unlink()
    app.run()  # the page after the click on the ZIP button (it reruns)
    left_out = [unescape(w.value) for w in app.warning if "left out of the ZIP" in w.value]
    assert left_out == ["1 of these files can no longer be read and will be left out of the ZIP (NOT_INCLUDED.txt "
                        "inside it lists them): photos/b.jpg (file not found: it was removed or renamed since the "
                        "folder was read)"]
    run = app.session_state["run"]
    archive = zipfile.ZipFile(results_ui.zip_maker(run, ranked(run.snapshot())[:3])())
    assert "NOT_INCLUDED.txt" in archive.namelist() and len(archive.namelist()) == 3
    assert "b.jpg" in archive.read("NOT_INCLUDED.txt").decode()


def test_server_folder_is_not_offered_without_a_data_folder(app, monkeypatch):
    monkeypatch.delenv("LYCHEE_DATA_DIR", raising=False)
    app.run()
    assert app.radio(key="upload_source__en").options == ["Uploaded files", "Uploaded folder"]


# -- access: the model allow-list -------------------------------------------------------------------
@pytest.fixture
def load_calls(monkeypatch):
    calls: list[str] = []
    original = model_ui._load

    def counting(name, *settings):
        calls.append(name)
        return original(name, *settings)

    monkeypatch.setattr(model_ui, "_load", counting)
    return calls


def test_a_model_not_on_the_allow_list_is_refused_in_one_sentence(app, load_calls):
    name_box = next(ti for ti in app.text_input if ti.key.startswith("model_input:"))
    name_box.set_value("someone/forty-gigabytes")
    app.button(key="FormSubmitter:model_form-Load model").click().run()
    assert not app.exception
    refusals = [e.value for e in app.error if "someone/forty-gigabytes" in e.value]
    assert refusals == [
        "someone/forty-gigabytes is not on this server's list of models (LYCHEE_MODELS): "
        "choose one of demo."
    ]
    assert "someone/forty-gigabytes" not in load_calls  # nothing was loaded
    assert app.session_state["model_name"] == "demo"  # the model in use stays
    assert not app.button(key="rank_button").disabled


def test_the_allow_list_comes_from_lychee_models(monkeypatch, load_calls):
    monkeypatch.setenv("LYCHEE_MODELS", "demo, /models/lychee")
    monkeypatch.setenv("LYCHEE_MODEL", "vec-ai/lychee-rerank-mm")  # configured, but not on the list
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.run()
    assert not at.exception
    assert at.session_state["model_name"] == "demo"  # the first allowed model instead
    assert "vec-ai/lychee-rerank-mm" not in load_calls
    box = next(ti for ti in at.text_input if ti.key.startswith("model_input:"))
    assert "This server allows: demo, /models/lychee." in box.help


# -- uploads ----------------------------------------------------------------------------------------
def test_upload_names_are_decoded(app, downloads):
    rank(app, [('say%22hi%22.png', encode(scene(2)), "image/png")])
    assert [n for _, _, n in cards(app)] == ['say"hi".png']
    assert csv_rows(downloads)[0]["file"] == 'say"hi".png'


def test_an_upload_is_held_once():
    """An Item holds the very bytes Streamlit keeps for the upload, not a copy."""
    record = UploadedFileRec("id-1", "a.png", "image/png", encode(scene(0)))
    upload = UploadedFile(record, FileURLs(file_id="id-1", upload_url="/upload", delete_url="/delete"))
    with patch.object(st, "session_state", {}):  # the digest cache, outside a script run
        item = media.item_from_upload(upload)
    assert item.source is record.data


def test_clear_releases_the_uploads(app):
    rank(app, photos(2))
    app.button(key="clear_button").click().run()
    assert not app.exception
    assert "run" not in app.session_state
    assert app.session_state["image_set"] is None
    assert not app.file_uploader(key="files_upload_1").value  # the uploader starts empty
    assert not cards(app)


# -- runs -------------------------------------------------------------------------------------------
def test_a_run_whose_session_is_gone_stops_and_keeps_what_is_done(reranker):
    run = Run(reranker.settings(QUERY, mode="sequential"), [Item(f"p{i}.png", f"d{i}", encode(scene(i))) for i in range(200)])
    connected = threading.Event()
    connected.set()
    run.start(reranker, session_alive=connected.is_set)
    deadline = time.monotonic() + 30
    while run.scored_count() < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    connected.clear()  # the tab is closed
    closed_at = time.monotonic()
    assert run.wait(30)
    assert time.monotonic() - closed_at < run_state.DISCONNECT_GRACE_S + 5
    assert run.status == "stopped" and 2 <= run.scored_count() < 200


def test_the_live_panel_shows_the_place_in_the_queue(app, monkeypatch):
    release = threading.Event()

    def queued(self, settings, images, **kwargs):
        kwargs["progress"](Progress(0, len(images), 0.0, 0.0, None, waiting=True, queue_position=3))
        release.wait(10)
        return Ranking(settings.query, "", tuple(ImageResult(i, n) for i, n in enumerate(kwargs["names"])), "batched", 0.0,
                       cancelled=True)

    monkeypatch.setattr(Reranker, "run", queued)
    app.text_input(key="query").set_value(QUERY)
    app.file_uploader(key="files_upload").set_value(photos(2))
    app.button(key="rank_button").click().run()
    try:
        run = app.session_state["run"]
        deadline = time.monotonic() + 10
        while not run.waiting and time.monotonic() < deadline:
            time.sleep(0.02)
        app.run()
        assert app.get("progress")[0].text == "Waiting for other runs on this model: place 3 in the queue…"
    finally:
        release.set()
    assert run.wait(10)


def test_an_error_that_stops_a_run_keeps_its_results_and_offers_resume(app, monkeypatch):
    original = Reranker.run

    def fails_after_first(self, settings, images, **kwargs):
        ranking = original(self, settings, images[:1], names=kwargs.pop("names")[:1], **kwargs)
        results = ranking.results + tuple(ImageResult(i, f"photo_{i}.png") for i in range(1, len(images)))
        return dataclasses.replace(ranking, results=results, error="CUDA error: an illegal memory access")

    monkeypatch.setattr(Reranker, "run", fails_after_first)
    rank(app, photos(3))
    assert [e.value for e in app.error] == ["The run failed: CUDA error: an illegal memory access."]
    assert len(cards(app)) == 1  # the finished result is shown
    assert app.button(key="resume_button").label == "Resume: rank the 2 not scored yet"


# -- results: viewer, pager, ZIP --------------------------------------------------------------------
def test_viewer_walks_the_ranking_with_previous_and_next(app):
    rank(app, photos(3))
    order = [n for _, _, n in cards(app)]
    first = next(b for b in app.button if b.key.startswith("view_") and unescape(b.label) == order[0])
    first.click().run()
    assert app.button(key="viewer_previous").disabled
    assert any("1 of 3 shown" in m.value for m in app.markdown)
    app.button(key="viewer_next").click().run()
    app.button(key="viewer_next").click().run()
    viewing = app.session_state["run"].items[app.session_state["viewer_item"]].name
    assert viewing == order[2] and app.button(key="viewer_next").disabled
    assert any("3 of 3 shown" in m.value for m in app.markdown)


def test_pager_is_above_and_below_the_gallery_and_both_move_together(app):
    rank(app, photos(25))
    app.selectbox(key="gallery_per_page").set_value(20).run()
    pagers = app.get("pagination")
    assert len(pagers) == 2
    pagers[1].set_value(2).run()  # the pager below the grid
    assert [p.value for p in app.get("pagination")] == [2, 2]
    assert [r for r, _, _ in cards(app)] == list(range(21, 26))


def test_zip_holds_the_shown_images_named_by_rank(app):
    rank(app, photos(4))
    app.number_input(key="top_k").set_value(2).run()
    button = next(b for b in app.get("download_button") if b.key == "download_zip")
    assert button.label.startswith("ZIP of the 2 shown")
    run = app.session_state["run"]
    top = [r for r in ranked(run.snapshot())][:2]
    archive = zipfile.ZipFile(results_ui.zip_maker(run, top)())
    assert archive.namelist() == [f"00{r.rank}_{r.name}" for r in top]
    assert archive.read(archive.namelist()[0]) == run.items[top[0].index].source


# -- login ------------------------------------------------------------------------------------------
def test_with_login_configured_nothing_shows_before_logging_in(demo_cache):
    """Streamlit gives st.user an is_logged_in field exactly when [auth] is configured in secrets.toml
    (AppTest cannot configure that section, so the test sets the field as Streamlit would)."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.user = {"is_logged_in": False}
    at.run()
    assert not at.exception
    assert any("Log in to use this server" in i.value for i in at.info)
    assert at.button(key="login").label == "Log in"
    assert not any(b.key == "rank_button" for b in at.button)
    assert not at.text_input  # no model box, no query: nothing before logging in
    at.user = {"is_logged_in": True, "email": "ada@example.org"}
    at.run()
    assert any(b.key == "rank_button" for b in at.button)
    assert at.button(key="logout").label == "Log out ada@example.org"


def test_a_thin_strip_has_a_visible_thumbnail():
    """A 10000×10 image would shrink to 256×0 in a card: the card shows its middle part instead."""
    strip = Item("strip.png", "strip-digest", encode(Image.new("RGB", (10_000, 10), (20, 120, 200))))
    card = Image.open(io.BytesIO(media.card_thumb(strip))).convert("RGB")
    column = [card.getpixel((card.width // 2, y)) for y in range(card.height)]
    blue_rows = [y for y, (r, g, b) in enumerate(column) if b > 150 and r < 100]
    assert len(blue_rows) >= 3, f"{len(blue_rows)} visible rows of the strip in a {card.size} card"


def test_the_fast_preprocessing_setting_reaches_the_engine_and_marks_old_results(app, monkeypatch):
    asked = []
    original = Reranker.run

    def recording(self, settings, images, **kwargs):
        asked.append(settings.preprocess)
        return original(self, settings, images, **kwargs)

    monkeypatch.setattr(Reranker, "run", recording)
    rank(app, photos(2))
    app.radio(key="preprocess__en").set_value("fast").run()
    assert any("the preprocessing" in w.value for w in app.warning)  # the shown scores used "exact"
    rank(app, photos(2))
    assert asked == ["exact", "fast"]


# -- thumbnails ---------------------------------------------------------------------------------------
def test_thumbnails_come_from_the_engines_own_decoding(app, monkeypatch):
    """While a run scores, each card's thumbnail is made from the picture the engine decoded for the
    model: the gallery decodes no file a second time."""
    decoded = []
    original = media.load_image
    monkeypatch.setattr(media, "load_image", lambda source, **kw: decoded.append(source) or original(source, **kw))
    files = [(f"photo_{i}.png", encode(scene(i, 300 + 20 * i, 200)), "image/png") for i in range(3)]
    rank(app, files)
    assert len(cards(app)) == 3
    assert decoded == []
    card = Image.open(io.BytesIO(media.card_thumb(app.session_state["run"].items[2])))
    assert card.size == (media.THUMB_SIDE, media.THUMB_SIDE)


def test_a_thumbnail_made_from_a_file_decodes_a_phone_photo_at_an_eighth(monkeypatch):
    sizes = []
    original = media.load_image

    def spy(source, **kwargs):
        picture = original(source, **kwargs)
        sizes.append(picture.size)
        return picture

    monkeypatch.setattr(media, "load_image", spy)
    photo = Item("phone.jpg", "phone-digest", encode(Image.new("RGB", (4032, 3024), (90, 140, 200)), "JPEG"))
    assert Image.open(io.BytesIO(media.thumb(photo))).size == (256, 192)
    assert sizes == [(504, 378)]  # libjpeg's 1/8 scale: 1/64 of the pixels, never the full 12 MP


def test_an_error_in_the_picture_hook_never_costs_a_score(reranker):
    def broken(index, picture, size):
        raise RuntimeError("a front end's bug")

    settings = reranker.settings(QUERY)
    ranking = reranker.run(settings, [encode(scene(i)) for i in range(3)], on_picture=broken)
    assert [r.status for r in ranking.results] == ["scored"] * 3 and ranking.error is None


# -- runs ---------------------------------------------------------------------------------------------
def test_a_refused_run_offers_no_resume(app, rank_calls):
    rank(app, photos(2), query="海边日落 " * 3000)  # more than the 3,200 tokens the model was trained on
    errors = [e.value for e in app.error]
    assert len(errors) == 1 and errors[0].startswith("Cannot rank: The query is too long")
    assert not any(b.key == "resume_button" for b in app.button)


def test_the_json_download_has_the_command_lines_schema(app, downloads, tmp_path, capsys):
    """One export schema: the app's JSON has the CLI's keys, with values of the same types."""
    from lychee_rerank.cli import main

    files = photos(2)
    rank(app, files)
    for name, data, _ in files:
        (tmp_path / name).write_bytes(data)
    assert main(["rank", "--query", QUERY, "--model", "demo", "--json", str(tmp_path / "cli.json"), str(tmp_path)]) == 0
    capsys.readouterr()
    cli = json.loads((tmp_path / "cli.json").read_text())
    ours = json.loads(downloads["lychee-ranking.json"])

    def kinds(record: dict) -> dict:
        return {key: type(value).__name__ for key, value in record.items() if key != "elapsed_s"}

    assert kinds(ours) == kinds(cli)
    assert [kinds(r) for r in ours["results"]] == [kinds(r) for r in cli["results"]]


# -- results: find a file, per page ---------------------------------------------------------------------
def ranked_run(count: int) -> Run:
    """A finished run of ``count`` tiny images, scored best first by name (no model needed)."""
    items = [Item(f"img_{i:03d}.png", f"digest-{i}", encode(scene(i, 32, 24))) for i in range(count)]
    results = [ImageResult(i, item.name, score=1 - i / (count + 1), width=32, height=24) for i, item in enumerate(items)]
    settings = RunSettings.build(QUERY, model="demo")
    return Run(settings, items, model_name="demo", is_demo=True, results=results)


def test_find_a_file_shows_it_with_its_rank_in_the_gallery_and_the_table(app):
    app.session_state["run"] = ranked_run(30)
    app.run()
    app.number_input(key="top_k").set_value(5).run()  # the file is found beyond what the filters show
    app.text_input(key="find_file").set_value("IMG_02").run()
    assert [r for r, _, _ in cards(app)] == list(range(21, 31))
    assert any(c.value == "10 of the 30 scored images match “IMG\\_02”." for c in app.caption)
    app.segmented_control(key="view_as__en").set_value("table").run()
    assert list(table_with(app, "preview")["rank"]) == list(range(21, 31))


def test_per_page_keeps_the_first_shown_image_on_screen(app):
    app.session_state["run"] = ranked_run(45)
    app.run()
    app.selectbox(key="gallery_per_page").set_value(40).run()
    app.get("pagination")[0].set_value(2).run()
    assert [r for r, _, _ in cards(app)][0] == 41
    app.selectbox(key="gallery_per_page").set_value(20).run()
    assert [r for r, _, _ in cards(app)][0] == 41  # page 3 of 20: #41 stays in view
    app.selectbox(key="gallery_per_page").set_value(160).run()
    assert [r for r, _, _ in cards(app)][0] == 1 and len(cards(app)) == 45


# -- messages -------------------------------------------------------------------------------------------
def test_the_demo_banner_offers_exactly_the_models_this_server_allows(monkeypatch, demo_cache):
    monkeypatch.setenv("LYCHEE_MODEL", "demo")
    for allowed, expected in (
        ("demo", "this server offers no other model (LYCHEE_MODELS)"),
        ("demo,/models/lychee", "load /models/lychee in the sidebar"),
    ):
        monkeypatch.setenv("LYCHEE_MODELS", allowed)
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
        at.run()
        banner = next(unescape(w.value) for w in at.warning if "Demo model in use" in w.value)
        assert expected in banner and "vec-ai" not in banner


def test_the_filters_help_says_what_each_download_holds(app):
    rank(app, photos(2))
    for key in ("top_k", "min_score"):
        widget = app.number_input(key=key) if key == "top_k" else app.slider(key=key)
        assert "CSV and JSON always hold the full ranking" in widget.help and "the ZIP holds the images shown" in widget.help


def test_server_folder_is_indexed_and_search_then_rerank_scores_only_the_top_k(data_dir, app, monkeypatch, tmp_path):
    monkeypatch.setenv("LYCHEE_EMBEDDER", "demo")
    monkeypatch.setenv("LYCHEE_INDEX_DIR", str(tmp_path / "library.index"))
    app.run()
    use_server_folder(app, "photos")
    assert any(c.value == "3 images, 0 indexed" for c in app.caption)
    app.button(key="index_button").click().run()
    job = app.session_state["index_job"]
    job.thread.join(timeout=120)
    assert not job.running and job.error is None, job.error
    app.run()
    assert any(c.value == "3 images, 3 indexed" for c in app.caption)

    app.radio(key="rerank_scope__en").set_value("top").run()
    app.number_input(key="retrieve_k").set_value(2).run()
    app.text_input(key="query").set_value(QUERY)
    app.button(key="rank_button").click().run()
    wait_for_run(app)
    run = app.session_state["run"]
    assert len(run.items) == 2 and run.scored_count() == 2
    assert sorted(r.retrieval_rank for r in run.results) == [1, 2]  # the first stage's place stays beside the score
    assert all(r.similarity is not None for r in run.results)
    assert any("the other 1 were not scored" in c.value for c in app.caption)
    # on screen too: each card says where the search put it, and the table has the two columns
    by_index = {r.index: r for r in run.results}
    shown = [c.value for c in app.caption if c.value.startswith("search #")]
    assert sorted(shown) == sorted(f"search #{r.retrieval_rank} · similarity {r.similarity:.3f}" for r in by_index.values())
    app.segmented_control(key="view_as__en").set_value("table").run()
    table = next(d.value for d in app.dataframe if "score" in d.value.columns)
    assert sorted(zip(table["retrieval_rank"], table["file"])) == sorted((r.retrieval_rank, r.name) for r in by_index.values())
