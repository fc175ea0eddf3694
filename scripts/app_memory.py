"""Server memory of the Streamlit app with many images, measured in a real browser (Chromium).

    .venv/bin/python scripts/app_memory.py upload --images 1000      # upload 1,000 photos, rank, clear
    .venv/bin/python scripts/app_memory.py server --images 1000      # rank a 1,000-photo server folder
    .venv/bin/python scripts/app_memory.py server --images 300 --file-mb 2.5 --zip
                                                 # ... then download the ZIP of all 300 (750 MB)

Starts `streamlit run app.py` (demo model) from --project (default: this checkout), drives it with
Playwright through /usr/bin/chromium, and prints the server's resident memory (RSS, with its child
processes) at each step, and its peak while ranking. The photos are ~300 KB noisy JPEGs, each with
different bytes (``--file-mb`` pads each file to that size after the JPEG's end, where decoders do
not look: large files, quick to rank). With ``--zip``, the ZIP of every photo is prepared and
downloaded after ranking: the script prints the server's memory before the click, its peak, 90 s
later and once the browser is closed. Figures depend on the machine: say where they were taken.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from app_fixtures import CHROMIUM, CHROMIUM_ARGS, streamlit_server  # noqa: E402
from imagegen import encode, photo  # noqa: E402

DISTINCT = 16  # different pictures; every file still has different bytes (a unique trailer)


def write_photos(folder: Path, count: int, file_mb: float = 0.0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    bases = [encode(photo(1000, 750, seed=i), "JPEG", quality=75) for i in range(DISTINCT)]
    paths = []
    for i in range(count):
        path = folder / f"photo_{i:04d}.jpg"
        data = bases[i % DISTINCT] + f"lychee-{i}".encode()  # after the JPEG end marker
        padding = max(0, int(file_mb * 1e6) - len(data))
        path.write_bytes(data + os.urandom(padding))  # random: a ZIP cannot shrink it
        paths.append(path)
    return paths


def rss(pid: int) -> int:
    process = psutil.Process(pid)
    return process.memory_info().rss + sum(c.memory_info().rss for c in process.children(recursive=True))


def server_pid(port: int) -> int:
    for conn in psutil.net_connections("tcp"):
        if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
            return conn.pid
    raise RuntimeError(f"no process listens on port {port}")


class PeakRss:
    """Samples the server's RSS every 0.25 s in a thread."""

    def __init__(self, pid: int):
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.25):
            self.peak = max(self.peak, rss(self.pid))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def mb(n: int) -> str:
    return f"{n / 1e6:,.0f} MB"


def zip_download(page, pid: int, work: Path) -> None:
    """Prepare and download the ZIP of every photo shown: the server's memory before the click, at
    its peak, a minute and a half later, after the page's garbage collection, and once the browser is
    closed (served from disk by the app's own route, the archive never sits in the server's memory)."""
    page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]').wait_for()
    time.sleep(3)
    before = rss(pid)
    print(f"before the ZIP:                        RSS {mb(before)}")
    with PeakRss(pid) as peak:
        started = time.monotonic()
        page.get_by_role("button", name=re.compile(r"^ZIP of the")).click()  # prepared on disk
        link = page.get_by_role("link", name=re.compile(r"^Download lychee-top-"))
        link.wait_for(timeout=900_000)
        print(f"ZIP prepared in {time.monotonic() - started:.0f} s: RSS {mb(rss(pid))}, peak {mb(peak.peak)}")
        with page.expect_download(timeout=900_000) as download:
            link.click()
        saved = work / "download.zip"
        download.value.save_as(saved)
        print(f"ZIP of {mb(saved.stat().st_size)} downloaded in {time.monotonic() - started:.0f} s: "
              f"RSS {mb(rss(pid))}, peak {mb(peak.peak)}")
        time.sleep(max(0.0, 90 - (time.monotonic() - started)))
    print(f"90 s after the click:                  RSS {mb(rss(pid))}, {mb(rss(pid) - before)} above before the ZIP")
    # Streamlit's page checks a download's address with a fetch() whose body it never reads: until the
    # browser collects that response, the server still holds what it could not send on it.
    cdp = page.context.new_cdp_session(page)
    cdp.send("HeapProfiler.collectGarbage")
    time.sleep(5)
    print(f"the page's garbage collected:          RSS {mb(rss(pid))}, {mb(rss(pid) - before)} above before the ZIP")
    page.context.browser.close()
    time.sleep(5)
    print(f"browser closed:                        RSS {mb(rss(pid))}, {mb(rss(pid) - before)} above before the ZIP")
    saved.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", choices=("upload", "server"))
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--project", type=Path, default=ROOT, help="the checkout whose app.py is run")
    parser.add_argument("--tokens", choices=("256", "640", "1280"), default="1280", help="resolution preset")
    parser.add_argument("--file-mb", type=float, default=0.0, help="pad each photo file to this size")
    parser.add_argument("--zip", action="store_true", help="download the ZIP of every photo after ranking")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="lychee-memory-"))
    started = time.monotonic()
    photos = write_photos(work / "data" / "photos", args.images, args.file_mb)
    size = sum(p.stat().st_size for p in photos)
    print(f"{len(photos)} photos, {mb(size)} in all, written in {time.monotonic() - started:.0f} s")

    env = {"LYCHEE_DATA_DIR": str(work / "data"), "LYCHEE_CACHE": str(work / "cache")}
    with streamlit_server(env, log_path=work / "server.log", cwd=args.project) as url, sync_playwright() as pw:
        pid = server_pid(int(url.rsplit(":", 1)[1]))
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(900_000)
        page.goto(url)
        page.get_by_role("button", name="Rank images").wait_for()
        print(f"page loaded (demo model loaded):       RSS {mb(rss(pid))}")
        query = page.get_by_label("Query", exact=True)
        query.fill("海边日落 sunset over the sea")
        query.press("Enter")
        started = time.monotonic()
        if args.source == "upload":
            uploader = page.get_by_test_id("stFileUploader").filter(has_text="Images to rank")
            uploader.locator("input[type=file]").set_input_files([str(p) for p in photos])
            page.get_by_text(f"{len(photos)} images selected").wait_for()
            print(f"{len(photos)} photos uploaded in {time.monotonic() - started:.0f} s:     RSS {mb(rss(pid))}")
        else:
            page.get_by_text("Folder on the server", exact=True).first.click()
            box = page.get_by_role("combobox", name="Folder on the server")
            box.click()
            box.fill("photos")
            box.press("Enter")
            page.get_by_text(f"{len(photos)} images found in photos").wait_for()
            print(f"server folder scanned:                 RSS {mb(rss(pid))}")

        if args.tokens != "1280":
            page.get_by_text("Advanced settings").click()
            page.get_by_text(re.compile(f"^{args.tokens} · ")).click()
            page.wait_for_timeout(2000)  # the rerun it starts

        with PeakRss(pid) as peak:
            started = time.monotonic()
            page.get_by_role("button", name="Rank images").click()
            page.get_by_text(re.compile(rf"^{len(photos)} images ranked in")).wait_for()
            page.get_by_role("button", name=re.compile(r"^#?1?.*")).first.wait_for()
            time.sleep(3)  # the gallery's first page
        print(f"ranked in {time.monotonic() - started:.0f} s (gallery shown):       RSS {mb(rss(pid))}, "
              f"peak while ranking {mb(peak.peak)}")

        if args.zip:
            zip_download(page, pid, work)  # closes the browser: the last step
        else:
            clear(page, pid, browser)
    print(f"(files and server log in {work}; {os.cpu_count()} CPUs, load average "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())})")


def clear(page, pid: int, browser) -> None:
    page.get_by_role("button", name=re.compile(r"^Clear results")).click()
    page.get_by_role("heading", name="Results").wait_for(state="detached")
    time.sleep(5)
    print(f"results cleared:                       RSS {mb(rss(pid))}")
    browser.close()


if __name__ == "__main__":
    main()
