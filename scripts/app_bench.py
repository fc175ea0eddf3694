"""The app's time to rank a folder of phone photos, against the command line's on the same folder.

    .venv/bin/python scripts/app_bench.py --images 40                  # 40 photos of 4032x3024, once
    .venv/bin/python scripts/app_bench.py --images 40 --repeat 3       # alternating, medians

Generates the photos once (the bench's synthetic phone JPEGs, lychee_rerank.bench.workload, cached
in the system's temporary folder), then, for each repeat, with the same settings (demo model,
default resolution, mode and preprocessing, and no feature cache on either side: a round would
otherwise find the features the round before stored, and skip decoding altogether):

- the command line: ``python -m lychee_rerank rank --model demo --query Q FOLDER``; its ranking time
  is its own summary line ("40 scored, 0 failed in 31.2 s"), which leaves out starting Python and
  loading the model, as the app's figure does;
- the app: a fresh ``streamlit run app.py`` (demo model, LYCHEE_DATA_DIR above the folder, so no
  thumbnail is cached), driven by Chromium at 1400x1000: choose the folder, click "Rank images",
  and stop the clock when the gallery shows every photo's thumbnail (all on its first page).

Prints each figure, the ratio app / command line, and the load average beside them: on a shared
machine, run it when it is quiet, or repeat and read the medians.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from app_fixtures import CHROMIUM, CHROMIUM_ARGS, streamlit_server  # noqa: E402
from lychee_rerank.bench.workload import parse_workload, write_workload  # noqa: E402

QUERY = "海边日落 sunset over the sea"
# Timed inside the page, so that the measuring costs nothing while the app works (a test tool polling
# the page every few milliseconds would take CPU from the ranking on a small machine): the click on
# "Rank images", and the moment the n-th card's thumbnail has loaded, seen by a MutationObserver and
# by image load events.
CLOCK = """n => {
  window.benchClick = window.benchDone = null;
  document.addEventListener('click', event => {
    const button = event.target.closest('button');
    if (button && button.innerText.includes('Rank images')) window.benchClick = performance.now();
  }, true);
  const check = () => {
    if (window.benchDone || window.benchClick === null) return;
    const shown = [...document.querySelectorAll('[class*="st-key-card_"] img')].filter(i => i.complete && i.naturalWidth > 0);
    if (shown.length >= n) window.benchDone = performance.now();
  };
  new MutationObserver(check).observe(document.body, {subtree: true, childList: true, attributes: true});
  document.addEventListener('load', check, true);
}"""


def load() -> str:
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


def photo_folder(count: int, size: str) -> Path:
    """A folder holding exactly the photos: hard links to the bench's cached files (a symbolic link
    would lead out of the app's data folder, and the app would rightly not follow it)."""
    paths = write_workload(parse_workload(size), count, seed=0)
    folder = Path(paths[0]).parent.parent / f"app-bench-{size}-{count}" / "photos"
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    for path in paths:
        try:
            os.link(path, folder / Path(path).name)
        except OSError:
            shutil.copyfile(path, folder / Path(path).name)
    return folder


def cli_seconds(folder: Path, count: int) -> tuple[float, float]:
    """(the command's own ranking time, its wall time)."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "lychee_rerank", "rank", "--model", "demo", "--no-cache", "--query", QUERY, str(folder)],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )
    wall = time.perf_counter() - started
    found = re.search(rf"{count} scored, 0 failed in ([0-9.]+) s", done.stderr)
    if not found:
        raise RuntimeError(f"unexpected summary from the command line:\n{done.stderr[-2000:]}")
    return float(found[1]), wall


def app_seconds(folder: Path, count: int, cache: Path) -> tuple[float, float]:
    """(click to every thumbnail shown, the app's own "ranked in" figure)."""
    from playwright.sync_api import sync_playwright

    env = {"LYCHEE_DATA_DIR": str(folder.parent), "LYCHEE_CACHE": str(cache), "LYCHEE_FEATURE_CACHE": "off"}
    with streamlit_server(env) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000}, locale="en-US")
        page.set_default_timeout(900_000)
        page.goto(url)
        page.get_by_role("button", name="Rank images").wait_for()
        query = page.get_by_label("Query", exact=True)
        query.fill(QUERY)
        query.press("Enter")
        page.get_by_text("Folder on the server", exact=True).first.click()
        box = page.get_by_role("combobox", name="Folder on the server")
        box.click()
        box.fill(folder.name)
        box.press("Enter")
        page.get_by_text(f"{count} images found in {folder.name}").wait_for()
        page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]').wait_for()
        page.evaluate(CLOCK, count)
        page.get_by_role("button", name="Rank images").click()
        page.wait_for_function("() => window.benchDone !== null", polling=1000)
        shown = page.evaluate("() => (window.benchDone - window.benchClick) / 1000")
        summary = page.get_by_text(re.compile(rf"^{count} images ranked in")).inner_text()
        browser.close()
    return shown, _seconds(summary.split("ranked in ", 1)[1].split(" · ")[0])


def _seconds(text: str) -> float:
    """The page's duration ("4.2 s", "42 s", "1 min 02 s") in seconds."""
    minutes = re.search(r"(\d+) min", text)
    seconds = re.search(r"([0-9.]+) s", text)
    return 60 * int(minutes[1] if minutes else 0) + float(seconds[1] if seconds else 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--size", default="4032x3024", help="the bench's workload (default: phone photos)")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()

    folder = photo_folder(args.images, args.size)
    cache = Path(os.environ.get("LYCHEE_CACHE", Path.home() / ".cache" / "lychee-rerank"))
    print(f"{args.images} photos of {args.size} in {folder}; {os.cpu_count()} CPUs")
    ratios = []
    for round_ in range(1, args.repeat + 1):
        cli, wall = cli_seconds(folder, args.images)
        print(f"[{round_}] command line: ranked in {cli:.1f} s ({wall:.1f} s with start and model load)"
              f"   load average {load()}")
        app, inside = app_seconds(folder, args.images, cache)
        print(f"[{round_}] app: click to every thumbnail shown {app:.1f} s (its own 'ranked in' {inside:.1f} s)"
              f"   load average {load()}")
        ratios.append(app / cli)
        print(f"[{round_}] app / command line: x{app / cli:.2f}")
    if len(ratios) > 1:
        print(f"median app / command line over {len(ratios)} rounds: x{statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
