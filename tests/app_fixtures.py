"""Helpers for the app tests: picture-like test images, a free port, and a `streamlit run` server."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from PIL import Image, ImageDraw

from imagegen import encode  # noqa: F401  (re-exported for the app tests)

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]

_PALETTES = [
    ((255, 140, 60), (250, 200, 120), (30, 70, 140)),  # sunset over the sea
    ((120, 180, 240), (200, 230, 250), (60, 130, 60)),  # meadow
    ((20, 24, 60), (70, 60, 120), (240, 220, 120)),  # night
    ((230, 230, 235), (250, 250, 250), (200, 60, 60)),  # product shot
    ((90, 140, 200), (160, 200, 230), (230, 210, 170)),  # beach
    ((40, 90, 50), (90, 150, 80), (130, 90, 50)),  # forest
]


def scene(index: int, width: int = 320, height: int = 240) -> Image.Image:
    """A small picture-like image (sky gradient, sun or object, ground), different for each index."""
    top, bottom, ground = _PALETTES[index % len(_PALETTES)]
    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)
    horizon = int(height * (0.55 + 0.1 * math.sin(index)))
    for y in range(horizon):
        f = y / max(1, horizon - 1)
        draw.line([(0, y), (width, y)], fill=tuple(int(a + (b - a) * f) for a, b in zip(top, bottom)))
    draw.rectangle([0, horizon, width, height], fill=ground)
    radius = 18 + (index * 7) % 30
    cx = int(width * (0.2 + 0.6 * ((index * 0.37) % 1)))
    cy = int(horizon * 0.5)
    accent = tuple(255 - c for c in ground)
    if index % 2:
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=accent)
    else:
        draw.rectangle([cx - radius, cy - radius // 2, cx + radius, cy + radius], fill=accent)
    return image


def write_scenes(folder: Path, count: int, width: int = 160, height: int = 120) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        fmt, suffix = (("JPEG", ".jpg"), ("PNG", ".png"), ("WEBP", ".webp"))[i % 3]
        path = folder / f"scene_{i:03d}{suffix}"
        path.write_bytes(encode(scene(i, width, height), fmt))
        paths.append(path)
    return paths


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_process(process: subprocess.Popen, timeout: float = 10.0) -> None:
    """Terminate, and kill if it does not exit in time."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


def wait_healthy(url: str, process: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"streamlit exited early with code {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"streamlit did not become healthy at {url} within {timeout:.0f} s")


@contextmanager
def streamlit_server(env_overrides: dict[str, str] | None = None, log_path: Path | None = None, cwd: Path = ROOT):
    """`streamlit run app.py` in ``cwd`` (a checkout; its .streamlit/config.toml applies) on a free
    loopback port with the demo model; yields the base URL."""
    port = free_port()
    env = dict(os.environ)
    env.update({"LYCHEE_MODEL": "demo", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    env.update(env_overrides or {})
    log = open(log_path, "wb") if log_path else subprocess.DEVNULL
    process = subprocess.Popen(
        [
            sys.executable, "-m", "streamlit", "run", "app.py",
            "--server.headless", "true",
            "--server.address", "127.0.0.1",
            "--server.port", str(port),
            "--browser.gatherUsageStats", "false",
        ],
        cwd=cwd,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process)
        yield url
    finally:
        stop_process(process)
        if log_path:
            log.close()
