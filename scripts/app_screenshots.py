"""The screenshots in docs/screenshots/, taken with Chromium from the running app (demo model).

    .venv/bin/python scripts/app_screenshots.py [--out docs/screenshots]

Ranks ten test scenes and a tall poster from a server folder in English and in Chinese, and writes
rerank-{en,zh}.png, viewer-en.png (the poster, fitted to the window) and gpu-monitor-{en,zh}.png.
Chinese text needs a CJK font (Debian: fonts-noto-cjk).
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from app_fixtures import CHROMIUM, CHROMIUM_ARGS, encode, scene, streamlit_server, write_scenes  # noqa: E402

LABELS = {
    "en": dict(locale="en-US", query="Query", rank="Rank images", server="Folder on the server",
               ranked=r"images ranked in", gpu="GPU monitor"),
    "zh": dict(locale="zh-CN", query="查询", rank="开始排序", server="服务器上的文件夹",
               ranked=r"已排序 \d+ 张图片", gpu="GPU 监控"),
}


def shoot(url: str, browser, lang: str, out: Path) -> None:
    labels = LABELS[lang]
    context = browser.new_context(viewport={"width": 1400, "height": 1900}, locale=labels["locale"])
    page = context.new_page()
    page.set_default_timeout(120_000)
    page.goto(url)
    page.get_by_role("button", name=labels["rank"]).wait_for()
    query = page.get_by_label(labels["query"], exact=True)
    query.fill("海边日落 sunset over the sea")
    query.press("Enter")
    page.get_by_text(labels["server"], exact=True).first.click()
    box = page.get_by_role("combobox", name=labels["server"])
    box.click()
    box.fill("photos")
    box.press("Enter")
    page.get_by_role("button", name=labels["rank"]).click()
    page.get_by_text(re.compile(labels["ranked"])).first.wait_for()
    time.sleep(3)  # the thumbnails
    page.screenshot(path=out / f"rerank-{lang}.png")
    if lang == "en":
        page.set_viewport_size({"width": 1400, "height": 900})
        page.get_by_role("button", name="poster.jpg").click()
        page.get_by_role("dialog").wait_for()
        time.sleep(2)
        page.screenshot(path=out / "viewer-en.png")
        page.keyboard.press("Escape")
    page.get_by_role("link", name=labels["gpu"]).click()
    page.get_by_test_id("stMetric").first.wait_for()
    time.sleep(9)  # a few readings for the history chart
    page.set_viewport_size({"width": 1400, "height": 900})
    page.screenshot(path=out / f"gpu-monitor-{lang}.png")
    context.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    data = Path(tempfile.mkdtemp(prefix="lychee-shots-")) / "data"
    write_scenes(data / "photos", 10)
    (data / "photos" / "poster.jpg").write_bytes(encode(scene(4, 706, 3348), "JPEG"))
    args.out.mkdir(parents=True, exist_ok=True)
    with streamlit_server({"LYCHEE_DATA_DIR": str(data)}) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        for lang in LABELS:
            shoot(url, browser, lang, args.out)
        browser.close()
    print(f"screenshots written to {args.out}")


if __name__ == "__main__":
    main()
