"""End to end in a real browser: `streamlit run app.py` (demo model, loopback only) driven by Playwright
through Debian's Chromium. Upload three images, type a mixed query, Rank, read the gallery, download
the CSV, visit the GPU monitor. Screenshots land in artifacts/ (gitignored) for CI to keep."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

from app_fixtures import CHROMIUM, CHROMIUM_ARGS, ROOT, streamlit_server, write_scenes

ARTIFACTS = ROOT / "artifacts"
QUERY = "海边日落 sunset over the sea"
TIMEOUT_MS = 30_000


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
def server(demo_cache):
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "browser-failure.png").unlink(missing_ok=True)
    with streamlit_server({"LYCHEE_CACHE": str(demo_cache)}, log_path=ARTIFACTS / "streamlit-server.log") as url:
        yield url


def test_rank_three_images_and_download_csv(server, browser, tmp_path):
    images = write_scenes(tmp_path / "images", 3)
    context = browser.new_context(viewport={"width": 1400, "height": 1700}, locale="en-US", accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    try:
        page.goto(server, timeout=60_000)
        rank_button = page.get_by_role("button", name="Rank images")
        rank_button.wait_for(timeout=60_000)  # the first page load also loads the demo model
        assert page.get_by_text("Demo model in use").is_visible()

        query = page.get_by_label("Query", exact=True)
        query.fill(QUERY)
        query.press("Enter")
        uploader = page.get_by_test_id("stFileUploader").filter(has_text="Images to rank")
        uploader.locator("input[type=file]").set_input_files([str(p) for p in images])
        page.get_by_text("3 images selected").wait_for()

        rank_button.click()
        page.get_by_text(re.compile(r"^3 images ranked in")).wait_for()
        page.get_by_role("button", name="Stop").wait_for(state="detached")

        cards = page.get_by_text(re.compile(r"^#\d+ · score \d\.\d{4}$"))
        expect(cards).to_have_count(3)  # the gallery renders progressively: wait for all three
        expect(page.get_by_role("button", name="View")).to_have_count(3)
        card_texts = cards.all_inner_texts()
        ranks = [int(re.search(r"#(\d+)", t)[1]) for t in card_texts]
        scores = [float(re.search(r"score (\d\.\d{4})", t)[1]) for t in card_texts]
        assert ranks == [1, 2, 3]
        assert scores == sorted(scores, reverse=True)
        names_in_gallery = [n for n in page.get_by_text(re.compile(r"^scene_\d{3}\.\w+$")).all_inner_texts()
                            if n in {p.name for p in images}]
        page.screenshot(path=ARTIFACTS / "browser-ranked.png", full_page=True)

        with page.expect_download() as download_info:
            page.get_by_role("button", name="Download CSV").click()
        download = download_info.value
        assert download.suggested_filename == "lychee-ranking.csv"
        text = Path(download.path()).read_text(encoding="utf-8")
        assert text.startswith("rank,file,score,error")
        rows = list(csv.DictReader(io.StringIO(text)))
        assert [row["rank"] for row in rows] == ["1", "2", "3"]
        assert sorted(row["file"] for row in rows) == sorted(p.name for p in images)
        assert [row["file"] for row in rows] == names_in_gallery[-3:]
        assert [round(float(row["score"]), 4) for row in rows] == scores

        page.get_by_role("link", name="GPU monitor").click()
        page.get_by_role("heading", name="GPU monitor").wait_for()
        page.get_by_test_id("stMetric").first.wait_for()
        page.screenshot(path=ARTIFACTS / "browser-gpu-monitor.png", full_page=True)
        assert page.get_by_test_id("stException").count() == 0
    except Exception:
        page.screenshot(path=ARTIFACTS / "browser-failure.png", full_page=True)
        raise
    finally:
        context.close()
