"""End to end in a real browser: `streamlit run app.py` (demo model, loopback only, the project's own
.streamlit/config.toml) driven by Playwright through Debian's Chromium.

- upload three images, type a mixed query, Rank, read the gallery, open the viewer and step through
  it with the keyboard, download the CSV and a ZIP, clear (the uploads leave the server's memory),
  visit the GPU monitor; the page fetches nothing from outside the server and the chart logs no
  warning;
- rank a folder on the server ($LYCHEE_DATA_DIR) without uploading anything;
- index that folder, then search the index and rerank only the top K;
- a model name that is not on the allow-list is refused in one sentence;
- closing the tab of a running 1,000-image run frees the model within 10 seconds;
- the uploads of a closed tab leave the server's memory once its session has ended (nothing in the
  app keeps them).

Screenshots land in artifacts/ (gitignored) for CI to keep."""

from __future__ import annotations

import csv
import io
import json
import re
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest
from playwright.sync_api import expect

from app_fixtures import CHROMIUM, CHROMIUM_ARGS, ROOT, streamlit_server, write_scenes

ARTIFACTS = ROOT / "artifacts"
QUERY = "海边日落 sunset over the sea"
TIMEOUT_MS = 30_000
MANY = 1000  # images in the server folder whose run is cancelled by closing the tab
CARD_NAME = re.compile(r"^scene_\d{3}\.\w+$")


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.fail(
            f"{CHROMIUM} is missing: the browser test needs Debian's Chromium "
            "(apt-get install chromium; scripts/test.sh installs it)",
            pytrace=False,
        )
    from playwright.sync_api import sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=60_000)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """The server's data folder: few/ (4 images, one in a subfolder, and a text file) and many/ (1,000)."""
    root = tmp_path_factory.mktemp("data")
    write_scenes(root / "few", 3)
    write_scenes(root / "few" / "sub", 1)
    (root / "few" / "notes.txt").write_text("not a picture")
    write_scenes(root / "many", MANY, width=448, height=336)
    return root


@pytest.fixture(scope="module")
def server(demo_cache, data_dir):
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "browser-failure.png").unlink(missing_ok=True)
    env = {
        "LYCHEE_CACHE": str(demo_cache),
        "LYCHEE_DATA_DIR": str(data_dir),
        "LYCHEE_EMBEDDER": "demo",  # the collection index's embedder (search then rerank)
        "LYCHEE_INDEX_DIR": str(data_dir.parent / "library.index"),
        # a closed tab's session is kept 2 s for a reconnect (default 2 minutes): then it has ended
        "STREAMLIT_SERVER_DISCONNECTED_SESSION_TTL": "2",
        # every line of Streamlit's log says its level, so that a warning cannot pass unnoticed
        "STREAMLIT_LOGGER_MESSAGE_FORMAT": "%(asctime)s %(levelname)s %(name)s: %(message)s",
    }
    with streamlit_server(env, log_path=ARTIFACTS / "streamlit-server.log") as url:
        yield url


@pytest.fixture
def page(server, browser):
    """A fresh tab on the app (the first load also loads the demo model); screenshot on failure."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, locale="en-US", accept_downloads=True)
    tab = context.new_page()
    tab.set_default_timeout(TIMEOUT_MS)
    try:
        tab.goto(server, timeout=60_000)
        tab.get_by_role("button", name="Rank images").wait_for(timeout=60_000)
        yield tab
    except Exception:
        tab.screenshot(path=ARTIFACTS / "browser-failure.png", full_page=True)
        raise
    finally:
        context.close()


def type_query(page, text: str = QUERY) -> None:
    query = page.get_by_label("Query", exact=True)
    query.fill(text)
    query.press("Enter")


def choose_server_folder(page, folder: str, source: str = "Folder on the server") -> None:
    """Pick "Folder on the server", type the folder's name in the picker and press Enter (the first
    folder offered that matches, or the name as typed)."""
    page.get_by_text(source, exact=True).first.click()
    box = page.get_by_role("combobox", name=source)
    box.click()
    box.fill(folder)
    box.press("Enter")


def wait_idle(page) -> None:
    """Until the app's script is not running: a click during a rerun can land on a button the rerun
    is about to replace (seen once under load: the ZIP download never started)."""
    page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]').wait_for()


def download(page, button_name: str) -> Path:
    wait_idle(page)
    with page.expect_download() as download_info:
        page.get_by_role("button", name=button_name).click()
    return Path(download_info.value.path())


def test_rank_three_uploads_view_them_and_download_csv_and_zip(server, page, tmp_path):
    outside, warnings = [], []
    page.on("request", lambda r: outside.append(r.url) if not r.url.startswith((server, "data:", "blob:")) else None)
    page.on("console", lambda m: warnings.append(m.text) if m.type in ("warning", "error") else None)
    images = write_scenes(tmp_path / "images", 3)
    assert page.get_by_text("Demo model in use").is_visible()

    type_query(page)
    uploader = page.get_by_test_id("stFileUploader").filter(has_text="Images to rank")
    uploader.locator("input[type=file]").set_input_files([str(p) for p in images])
    page.get_by_text("3 images selected").wait_for()

    page.get_by_role("button", name="Rank images").click()
    page.get_by_text(re.compile(r"^3 images ranked in")).wait_for()
    page.get_by_role("button", name="Stop").wait_for(state="detached")

    cards = page.get_by_text(re.compile(r"^#\d+ · score \d\.\d{4}$"))
    expect(cards).to_have_count(3)  # the gallery renders progressively: wait for all three
    names = page.get_by_role("button", name=CARD_NAME)
    expect(names).to_have_count(3)
    card_texts = cards.all_inner_texts()
    ranks = [int(re.search(r"#(\d+)", t)[1]) for t in card_texts]
    scores = [float(re.search(r"score (\d\.\d{4})", t)[1]) for t in card_texts]
    names_in_gallery = [re.search(r"scene_\d{3}\.\w+", t)[0] for t in names.all_inner_texts()]  # not the icon
    assert ranks == [1, 2, 3]
    assert scores == sorted(scores, reverse=True)
    page.screenshot(path=ARTIFACTS / "browser-ranked.png", full_page=True)

    # the viewer: the best image, then the next one with the → key
    names.first.click()
    dialog = page.get_by_role("dialog")
    expect(dialog.get_by_text(re.compile(r"#1 · Score .* · 1 of 3 shown"))).to_be_visible()
    page.keyboard.press("ArrowRight")
    expect(dialog.get_by_text(re.compile(r"#2 · Score .* · 2 of 3 shown"))).to_be_visible()
    expect(dialog.get_by_text(names_in_gallery[1], exact=True)).to_be_visible()
    page.keyboard.press("Escape")
    expect(dialog).to_have_count(0)

    text = download(page, "Download CSV").read_text(encoding="utf-8")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [row["rank"] for row in rows] == ["1", "2", "3"]
    assert [row["file"] for row in rows] == names_in_gallery
    # the CSV holds the full score, the gallery four decimals: compared with a tolerance, never rounded twice
    assert [float(row["score"]) for row in rows] == pytest.approx(scores, abs=0.5e-4 + 1e-9)
    assert {row["width"] + "×" + row["height"] for row in rows} == {"160×120"}  # the files' own size

    wait_idle(page)
    page.get_by_role("button", name=re.compile(r"^ZIP of the 3 shown")).click()  # prepared on disk, then a link
    with page.expect_download() as download_info:
        page.get_by_role("link", name=re.compile(r"^Download lychee-top-3\.zip")).click()
    archive = zipfile.ZipFile(Path(download_info.value.path()))
    assert archive.namelist() == [f"00{rank}_{name}" for rank, name in zip(ranks, names_in_gallery)]
    by_name = {p.name: p for p in images}
    assert archive.read(archive.namelist()[0]) == by_name[names_in_gallery[0]].read_bytes()

    held = uploaded_bytes(server)
    page.get_by_role("button", name="Clear results and images").click()
    expect(page.get_by_role("heading", name="Results")).to_have_count(0)
    expect(page.get_by_text("3 images selected")).to_have_count(0)  # the uploader is empty again
    released = sum(p.stat().st_size for p in images)
    assert wait_for(lambda: held - uploaded_bytes(server) >= released), "the server still holds the uploads"

    page.get_by_role("link", name="GPU monitor").click()
    page.get_by_role("heading", name="GPU monitor").wait_for()
    page.get_by_test_id("stMetric").first.wait_for()
    page.get_by_test_id("stVegaLiteChart").wait_for()  # the history chart, after two readings
    page.screenshot(path=ARTIFACTS / "browser-gpu-monitor.png", full_page=True)
    assert page.get_by_test_id("stException").count() == 0
    assert outside == [], "the page fetched from outside the server"
    assert not [w for w in warnings if "Infinite extent" in w], warnings


def test_a_server_folder_is_ranked_without_uploading(page):
    type_query(page)
    choose_server_folder(page, "few")
    page.get_by_text("4 images found in few").wait_for()
    page.get_by_text("Files not taken (1)").click()  # which and why: a table (its rows are checked in test_app)
    expect(page.get_by_test_id("stExpander").get_by_test_id("stDataFrame")).to_be_visible()
    expect(page.get_by_test_id("stFileUploader")).to_have_count(1)  # only the query image's

    page.get_by_role("button", name="Rank images").click()
    page.get_by_text(re.compile(r"^4 images ranked in")).wait_for()
    expect(page.get_by_role("button", name=CARD_NAME)).to_have_count(4)
    rows = list(csv.DictReader(io.StringIO(download(page, "Download CSV").read_text(encoding="utf-8"))))
    assert sorted(row["file"] for row in rows) == ["few/scene_000.jpg", "few/scene_001.png", "few/scene_002.webp",
                                                   "few/sub/scene_000.jpg"]


def test_a_server_folder_is_indexed_then_searched_and_only_the_top_k_reranked(page):
    type_query(page)
    choose_server_folder(page, "few")
    page.get_by_text("4 images, 0 indexed").wait_for()
    page.get_by_role("button", name="Index").click()
    page.get_by_text("4 images, 4 indexed").wait_for(timeout=60_000)
    wait_idle(page)
    page.get_by_text("Search the index, rerank the top K", exact=True).click()
    k = page.get_by_label("K (images to rerank)")
    k.fill("2")
    k.press("Enter")
    wait_idle(page)
    page.get_by_role("button", name="Rank images").click()
    page.get_by_text(re.compile(r"^2 images ranked in")).wait_for()
    expect(page.get_by_role("button", name=CARD_NAME)).to_have_count(2)
    expect(page.get_by_text(re.compile(r"the other 2 were not scored"))).to_be_visible()
    page.screenshot(path=ARTIFACTS / "search-then-rerank.png", full_page=True)


def test_a_model_not_on_the_allow_list_is_refused(page):
    box = page.get_by_role("textbox", name="Model: hub id, local folder, or demo")
    box.fill("someone/forty-gigabytes")
    page.get_by_role("button", name="Load model").click()
    expect(page.get_by_text(
        "someone/forty-gigabytes is not on this server's list of models (LYCHEE_MODELS): choose one of demo."
    )).to_be_visible()
    expect(page.get_by_text("Name: demo")).to_be_visible()  # the model in use stays
    expect(page.get_by_role("button", name="Rank images")).to_be_enabled()


def test_closing_the_tab_stops_its_run_within_10_seconds(page, server, browser):
    type_query(page)
    page.get_by_text("Advanced settings").click()
    page.get_by_text("sequential — one image at a time (memory-safe)").click()
    choose_server_folder(page, "many")
    page.get_by_text(f"{MANY} images found in many").wait_for()
    page.get_by_role("button", name="Rank images").click()
    bar = page.get_by_test_id("stProgress")
    bar.wait_for()
    box = bar.bounding_box()  # in view at once, without scrolling (ui/style.css keeps it there)
    assert box is not None and 0 <= box["y"] and box["y"] + box["height"] <= 1000, box
    progress = page.get_by_text(re.compile(r"^\d+/1000 · [0-9.]+ img/s"))
    progress.wait_for()  # scoring
    page.mouse.wheel(0, 5000)  # and whatever the page's scroll
    box = bar.bounding_box()
    assert box is not None and 0 <= box["y"] and box["y"] + box["height"] <= 1000, box

    watcher = browser.new_context(viewport={"width": 1400, "height": 1000}, locale="en-US").new_page()
    busy = watcher.get_by_text("The model is busy with another run")
    try:
        watcher.goto(server, timeout=60_000)
        busy.wait_for(timeout=60_000)  # another tab sees the run holding the model

        done, rate = re.match(r"^(\d+)/1000 · ([0-9.]+) img/s", progress.inner_text()).groups()
        left_s = (MANY - int(done)) / max(float(rate), 0.1)
        assert left_s > 30, f"the run would end by itself in {left_s:.0f} s: it cannot show a cancel"
        page.context.close()  # the tab with the run goes away
        closed_at = time.monotonic()
        while time.monotonic() - closed_at < 20:
            watcher.reload()
            watcher.get_by_role("button", name="Rank images").wait_for(timeout=60_000)
            if busy.count() == 0:
                break
            time.sleep(0.5)
        freed_after = time.monotonic() - closed_at
    finally:
        watcher.context.close()
    print(f"the model was free {freed_after:.1f} s after the tab was closed")
    assert freed_after < 10, f"the model was still busy {freed_after:.1f} s after the tab was closed"


def wait_for(condition, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(1)
    return True


def uploaded_bytes(server: str) -> int:
    """What Streamlit's upload manager holds, from the server's own metrics endpoint (which caches
    this figure for 5 s)."""
    with urllib.request.urlopen(f"{server}/_stcore/metrics", timeout=10) as response:
        text = response.read().decode()
    lines = [line for line in text.splitlines() if "UploadedFileManager" in line and not line.startswith("#")]
    return sum(int(float(line.rsplit(" ", 1)[1])) for line in lines)


def test_a_closed_tabs_uploads_leave_the_server(page, server, browser, tmp_path):
    images = write_scenes(tmp_path / "images", 3, width=640, height=480)
    uploader = page.get_by_test_id("stFileUploader").filter(has_text="Images to rank")
    uploader.locator("input[type=file]").set_input_files([str(p) for p in images])
    page.get_by_text("3 images selected").wait_for()
    assert uploaded_bytes(server) >= sum(p.stat().st_size for p in images)

    page.context.close()
    other = browser.new_context(locale="en-US").new_page()
    try:
        deadline = time.monotonic() + 60
        while uploaded_bytes(server) and time.monotonic() < deadline:
            time.sleep(2)
            other.goto(server, timeout=60_000)  # Streamlit drops expired sessions when others come and go
            other.get_by_role("button", name="Rank images").wait_for(timeout=60_000)
    finally:
        other.context.close()
    assert uploaded_bytes(server) == 0


# Words of the page that are names, not English: formats, units, products, setting values shown as
# they are typed (dtype, quantisation, modes), the app's own name, and the language switch (in both
# languages on purpose: whoever cannot read the page's language finds it).
TECHNICAL = {
    "English", "Language", "GPU", "cpu", "sdpa", "CPU", "NVIDIA", "RSS", "Torch", "Hub", "ID", "demo", "token", "dtype", "auto", "none", "bit", "bfloat",
    "float", "exact", "fast", "sequential", "JPEG", "JPG", "PNG", "WebP", "WEBP", "BMP", "GIF", "TIFF", "TIF",
    "ZIP", "CSV", "JSON", "MB", "GB", "KB", "Lychee",
}
# The text a user sees: visible text nodes, without Material icons (drawn from their names), without
# what is typed in the boxes (the query, the instruction sent to the model), and without text kept
# off screen for screen readers (Streamlit's "Skip to main content", shown only on keyboard focus).
VISIBLE_TEXT = """() => {
  const walker = document.createTreeWalker(document.querySelector('[data-testid="stApp"]'), NodeFilter.SHOW_TEXT);
  const parts = [];
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const element = node.parentElement;
    if (!element || element.closest('[data-testid="stIconMaterial"], [translate="no"], textarea, input')) continue;
    const style = getComputedStyle(element);
    const box = element.getBoundingClientRect();
    if (style.display === 'none' || style.visibility !== 'visible' || box.width * box.height <= 1 || box.right <= 0) continue;
    parts.push(node.textContent);
  }
  return parts.join(' ');
}"""
ENVIRONMENT_NAME = re.compile(r"\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b")  # LYCHEE_MODELS: a setting's name


def english_words(page, names: list[str]) -> set[str]:
    text = ENVIRONMENT_NAME.sub(" ", page.evaluate(VISIBLE_TEXT))
    for name in sorted(names, key=len, reverse=True):
        text = text.replace(name, " ")
    return {word for word in re.findall(r"[A-Za-z]{2,}", text) if word not in TECHNICAL}


def test_every_page_in_chinese_shows_no_english_words(server, browser, data_dir):
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, locale="zh-CN")
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    names = [QUERY, str(data_dir), "few", "many", "sub", "notes.txt"] + [f"scene_{i:03d}.{s}" for i in range(MANY) for s in ("jpg", "png", "webp")]
    seen: dict[str, set[str]] = {}
    try:
        page.goto(server, timeout=60_000)
        page.get_by_role("button", name="开始排序").wait_for(timeout=60_000)
        seen["start"] = english_words(page, names)

        query = page.get_by_label("查询", exact=True)
        query.fill(QUERY)
        query.press("Enter")
        page.get_by_text("高级设置").click()
        page.get_by_text("sequential — 逐张处理（最省显存）").click()
        choose_server_folder(page, "many", source="服务器上的文件夹")
        page.get_by_text(f"在 many 中找到 {MANY} 张图片").wait_for()
        page.get_by_role("button", name="开始排序").click()
        page.get_by_text(re.compile(r"^\d+/1000 · 每秒 [0-9.]+ 张")).wait_for()
        seen["running"] = english_words(page, names)
        page.get_by_role("button", name="停止").click()
        page.get_by_role("button", name=re.compile("^继续")).wait_for()
        page.get_by_text("图库").first.wait_for()
        seen["stopped, gallery"] = english_words(page, names)

        page.get_by_text("表格", exact=True).click()
        page.get_by_test_id("stDataFrame").first.wait_for()
        seen["table"] = english_words(page, names)
        page.get_by_text("图库", exact=True).click()
        page.get_by_role("button", name=re.compile(r"scene_\d{3}")).first.click()
        page.get_by_role("dialog").wait_for()
        seen["viewer"] = english_words(page, names)
        page.keyboard.press("Escape")

        choose_server_folder(page, "feww", source="服务器上的文件夹")  # mistyped
        page.get_by_text("您是不是要找").wait_for()
        seen["mistyped folder"] = english_words(page, names)

        page.get_by_role("link", name="GPU 监控").click()
        page.get_by_test_id("stMetric").first.wait_for()
        seen["GPU monitor"] = english_words(page, names)
    except Exception:
        page.screenshot(path=ARTIFACTS / "browser-failure.png", full_page=True)
        raise
    finally:
        context.close()
    found = {where: sorted(words) for where, words in seen.items() if words}
    assert not found, json.dumps(found, ensure_ascii=False)


def test_the_server_logged_no_warning_and_no_stack_trace(server):
    """Last in this module: nothing the tests above did made the server log a warning or a traceback
    (Streamlit logs a widget given both a default and a session-state value, for one)."""
    log = (ARTIFACTS / "streamlit-server.log").read_text(encoding="utf-8", errors="replace")
    bad = [line for line in log.splitlines()
           if re.search(r"\b(WARNING|ERROR|CRITICAL)\b|Traceback|Stack \(most recent call last\)|Warning:", line)]
    assert not bad, "\n".join(bad[:20])
