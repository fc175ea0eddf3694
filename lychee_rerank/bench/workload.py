"""The bench's images: synthetic, deterministic, and shaped like what users rank.

A workload is a square side (``448``), a ``WIDTHxHEIGHT`` photo size (``4032x3024``, a phone's) or
``mixed``: a fixed, seeded mix of real-world shapes (phone JPEGs in both orientations, one of them
turned by its EXIF tag, a 12-MP camera JPEG, PNG screenshots, an A4 scan, product shots, a panorama).

Pictures look like photos to a JPEG codec: smooth gradients, soft-edged shapes, mid-frequency texture
and sensor-like noise, written at quality 90 (pure noise would make decoding unrealistically slow, a
flat colour unrealistically fast). Screenshots are flat panels and text-like strokes saved as PNG.
Files are generated in parallel threads (numpy, Pillow's resize and codecs release the GIL) and kept
in a cache folder keyed by generator version, seed, kind, size and index, so a later run reuses them.
"""

from __future__ import annotations

import math
import os
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

# Bump when the pictures change: cached files of another version are never reused.
GENERATOR_VERSION = 2
JPEG_QUALITY = 90
MIN_SIDE, MAX_SIDE = 28, 16384
MIXED = "mixed"
# Texture and noise are drawn once per seed and tiled: cheap for 12-MP pictures, and a JPEG codec
# sees the same statistics as with fresh noise (tile sides are not multiples of the 8-pixel blocks).
_NOISE_TILE = (1021, 1019)
_ORIENTATION_TAG = 0x0112


@dataclass(frozen=True)
class ImageSpec:
    """One file to generate: what it shows, its stored pixel size, its format and EXIF orientation."""

    kind: str  # photo, screenshot, scan, product
    width: int  # stored (before the EXIF orientation turns it)
    height: int
    format: str = "JPEG"
    orientation: int = 1

    @property
    def suffix(self) -> str:
        return ".png" if self.format == "PNG" else ".jpg"

    def file_name(self, seed: int, index: int) -> str:
        turned = f"-o{self.orientation}" if self.orientation != 1 else ""
        return f"{self.kind}-{self.width}x{self.height}{turned}-s{seed}-{index:05d}{self.suffix}"


# The mixed workload: one deck of 20 shapes (shuffled per seed and per round of 20 images).
MIXED_DECK: tuple[tuple[ImageSpec, int], ...] = (
    (ImageSpec("photo", 4032, 3024), 5),  # phone, landscape
    (ImageSpec("photo", 4032, 3024, orientation=6), 3),  # phone, portrait by its EXIF tag
    (ImageSpec("photo", 3024, 4032), 1),  # phone, portrait pixels (an editor rotated it)
    (ImageSpec("photo", 4000, 3000), 1),  # 12-MP camera (sides not multiples of 28)
    (ImageSpec("photo", 4000, 3000, orientation=8), 1),
    (ImageSpec("screenshot", 1920, 1080, format="PNG"), 3),
    (ImageSpec("scan", 2480, 3508), 2),  # A4 at 300 dpi
    (ImageSpec("product", 800, 800), 3),
    (ImageSpec("photo", 9000, 2250), 1),  # panorama
)


@dataclass(frozen=True)
class Workload:
    """What ``--size`` names: ``label`` as written in tables and JSON."""

    label: str
    width: int | None = None  # None: the mixed set
    height: int | None = None

    @property
    def is_mixed(self) -> bool:
        return self.width is None

    def specs(self, count: int, seed: int) -> list[ImageSpec]:
        if not self.is_mixed:
            return [ImageSpec("photo", self.width, self.height)] * count
        import numpy as np

        deck = [spec for spec, copies in MIXED_DECK for _ in range(copies)]
        specs: list[ImageSpec] = []
        for round_ in range(math.ceil(count / len(deck))):
            order = np.random.default_rng([seed, round_, 7]).permutation(len(deck))
            specs += [deck[i] for i in order]
        return specs[:count]


def parse_workload(text: str) -> Workload:
    """``448`` (a square), ``4032x3024`` or ``mixed``; ValueError with one sentence otherwise."""
    part = text.strip().lower().removesuffix("px").strip()
    if part == MIXED:
        return Workload(MIXED)
    pieces = part.replace("×", "x").split("x")
    if len(pieces) not in (1, 2) or not all(p.strip().isdigit() for p in pieces):
        raise ValueError(f"--size takes a square side (448), WIDTHxHEIGHT (4032x3024) or mixed, separated by commas (got {text.strip()!r})")
    width, height = int(pieces[0]), int(pieces[-1])
    for side in (width, height):
        if not MIN_SIDE <= side <= MAX_SIDE:
            raise ValueError(f"--size {text.strip()} is out of range: image sides go from {MIN_SIDE} to {MAX_SIDE} pixels")
    return Workload(str(width) if len(pieces) == 1 else f"{width}x{height}", width, height)


def default_cache_dir() -> Path:
    return Path(tempfile.gettempdir()) / "lychee-bench-images"


def write_workload(workload: Workload, count: int, seed: int, cache_dir: Path | None = None, workers: int | None = None) -> list[str]:
    """Paths of ``count`` files of the workload, generated (in parallel) where not already cached."""
    return write_images(workload.specs(count, seed), seed, cache_dir, workers)


def write_images(specs: Sequence[ImageSpec], seed: int, cache_dir: Path | None = None, workers: int | None = None) -> list[str]:
    """Paths of the files of ``specs`` (image ``i`` drawn from ``specs[i]``), generated in parallel
    threads where the cache does not hold them yet."""
    folder = Path(cache_dir or default_cache_dir()) / f"v{GENERATOR_VERSION}"
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(spec, index, folder / spec.file_name(seed, index)) for index, spec in enumerate(specs)]
    missing = [job for job in jobs if not job[2].exists()]
    if missing:
        with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1, thread_name_prefix="bench-images") as pool:
            list(pool.map(lambda job: _write(*job, seed), missing))
    return [str(path) for _, _, path in jobs]


def _write(spec: ImageSpec, index: int, path: Path, seed: int) -> None:
    image = synthetic_image(spec, index, seed)
    partial = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.part")
    try:
        if spec.format == "PNG":
            image.save(partial, format="PNG")
        else:
            options = {}
            if spec.orientation != 1:
                exif = image.getexif()
                exif[_ORIENTATION_TAG] = spec.orientation
                options["exif"] = exif
            image.save(partial, format="JPEG", quality=JPEG_QUALITY, **options)
        os.replace(partial, path)  # never a half-written file under the final name
    finally:
        partial.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# Pictures
# ---------------------------------------------------------------------------------------------


def synthetic_image(spec: ImageSpec, index: int, seed: int = 0):
    """The picture of ``spec`` (stored size), deterministic in (seed, index, spec)."""
    import numpy as np

    rng = np.random.default_rng([seed, index, spec.width, spec.height, _KINDS.index(spec.kind)])
    return _DRAW[spec.kind](rng, spec.width, spec.height, seed)


def synthetic_photo(width: int, height: int, index: int = 0, seed: int = 0):
    """A photo-like picture of this size (the kind every square and WIDTHxHEIGHT workload uses)."""
    return synthetic_image(ImageSpec("photo", width, height), index, seed)


def _photo(rng, width: int, height: int, seed: int):
    """Gradients and waves, soft-edged shapes and texture, all drawn at a quarter of the size and
    scaled up (bicubic: the edges come out soft, as through a lens), then sensor-like noise."""
    import numpy as np
    from PIL import Image, ImageDraw

    small_w, small_h = max(8, width // 4), max(8, height // 4)
    y, x = np.ogrid[0:small_h, 0:small_w]
    x = (x / small_w).astype(np.float32)[..., None]
    y = (y / small_h).astype(np.float32)[..., None]
    corners = rng.uniform(0, 255, (4, 3)).astype(np.float32)
    field = (1 - x) * (1 - y) * corners[0] + x * (1 - y) * corners[1] + (1 - x) * y * corners[2] + x * y * corners[3]
    for _ in range(3):
        fx, fy = rng.uniform(-4, 4, 2)
        amplitude = rng.uniform(8, 30, 3).astype(np.float32)
        field = field + np.sin(2 * math.pi * (fx * x + fy * y) + rng.uniform(0, 2 * math.pi)) * amplitude
    picture = Image.fromarray(np.clip(field, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(picture)
    for _ in range(int(rng.integers(4, 10))):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        cx, cy = rng.uniform(0.05, 0.95) * small_w, rng.uniform(0.05, 0.95) * small_h
        rx, ry = rng.uniform(0.04, 0.25) * small_w, rng.uniform(0.04, 0.25) * small_h
        kind = int(rng.integers(0, 3))
        if kind == 0:
            draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=colour)
        elif kind == 1:
            draw.rectangle([cx - rx, cy - ry, cx + rx, cy + ry], fill=colour)
        else:
            angles = np.sort(rng.uniform(0, 2 * math.pi, int(rng.integers(3, 7))))
            draw.polygon([(cx + rx * math.cos(a), cy + ry * math.sin(a)) for a in angles], fill=colour)
    # Texture (foliage, fabric, gravel): mid-frequency detail that survives the upscale.
    pixels = np.asarray(picture, dtype=np.int16) + _texture(seed, rng, small_w, small_h, 14)[..., None]
    picture = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB").resize((width, height), Image.BICUBIC)
    return _add_noise(picture, seed, rng, 3)


def _screenshot(rng, width: int, height: int, seed: int):
    """Flat panels, buttons, text-like strokes and a photo thumbnail: what a PNG screenshot holds."""
    from PIL import Image, ImageDraw

    light = bool(rng.integers(0, 2))
    background = (246, 246, 248) if light else (30, 32, 36)
    ink = (40, 40, 48) if light else (220, 220, 225)
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)
    bar = max(8, height // 16)
    draw.rectangle([0, 0, width, bar], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    sidebar = width // 5
    draw.rectangle([0, bar, sidebar, height], fill=tuple(max(0, c - 12) for c in background))
    line = max(4, height // 60)
    for top in range(bar + line * 2, height - line, line * 2):  # lines of "words"
        left = sidebar + line * 2 if top > bar + height // 3 else line
        while left < width - line * 6:
            word = int(rng.integers(2, 9)) * line
            draw.rectangle([left, top, min(left + word, width - line), top + line], fill=ink)
            left += word + line
            if rng.uniform() < 0.08:
                break
    thumb_w, thumb_h = max(8, width // 3), max(8, height // 3)
    thumbnail = _photo(rng, thumb_w, thumb_h, seed)
    image.paste(thumbnail, (sidebar + line * 2, bar + line * 2))
    return image


def _scan(rng, width: int, height: int, seed: int):
    """A page: off-white paper with uneven lighting, lines of text, a figure, scanner noise."""
    import numpy as np
    from PIL import Image, ImageDraw

    small_w, small_h = max(8, width // 4), max(8, height // 4)
    y, x = np.ogrid[0:small_h, 0:small_w]
    shade = 236 + 10 * (x / small_w) - 8 * (y / small_h)
    paper = np.broadcast_to(shade.astype(np.float32)[..., None], (small_h, small_w, 3)) + np.float32([4, 2, -6])
    page = Image.fromarray(np.clip(paper, 0, 255).astype(np.uint8), "RGB").resize((width, height), Image.BICUBIC)
    draw = ImageDraw.Draw(page)
    margin, line = width // 10, max(3, height // 110)
    figure_top = int(rng.uniform(0.3, 0.6) * height)
    figure = (margin, figure_top, width - margin, figure_top + height // 5)
    for top in range(margin, height - margin, int(line * 1.8)):
        if figure[1] - line <= top <= figure[3] + line:
            continue
        left = margin
        while left < width - margin - line * 3:
            word = int(rng.integers(2, 10)) * line // 2
            draw.rectangle([left, top, min(left + word, width - margin), top + line], fill=(35, 35, 40))
            left += word + line
    page.paste(_photo(rng, figure[2] - figure[0], figure[3] - figure[1], seed), figure[:2])
    return _add_noise(page, seed, rng, 3)


def _product(rng, width: int, height: int, seed: int):
    """A shaded object on a white background, as on a shop's page."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), (252, 252, 252))
    box = (int(width * 0.2), int(height * 0.15), int(width * 0.8), int(height * 0.85))
    object_ = _photo(rng, box[2] - box[0], box[3] - box[1], seed)
    mask = Image.new("L", object_.size, 0)
    ImageDraw.Draw(mask).rounded_rectangle([0, 0, *object_.size], radius=min(object_.size) // 4, fill=255)
    image.paste(object_, box[:2], mask)
    return _add_noise(image, seed, rng, 2)


_DRAW = {"photo": _photo, "screenshot": _screenshot, "scan": _scan, "product": _product}
_KINDS = tuple(_DRAW)
_tiles: dict[tuple[int, float], object] = {}
_tiles_lock = threading.Lock()


def _noise_tile(seed: int, sigma: float):
    import numpy as np

    with _tiles_lock:
        tile = _tiles.get((seed, sigma))
        if tile is None:
            tile = np.random.default_rng([seed, 1_000_003]).normal(0, sigma, _NOISE_TILE[::-1]).astype(np.int16)
            _tiles[(seed, sigma)] = tile
    return tile


def _texture(seed: int, rng, width: int, height: int, sigma: float):
    """A (height, width) int16 field of noise cut from the seed's tile at a random offset, wrapping."""
    import numpy as np

    tile = _noise_tile(seed, sigma)
    th, tw = tile.shape
    dy, dx = int(rng.integers(0, th)), int(rng.integers(0, tw))
    reps = (-(-(height + dy) // th), -(-(width + dx) // tw))
    return np.tile(tile, reps)[dy : dy + height, dx : dx + width]


def _add_noise(image, seed: int, rng, sigma: float):
    """Luminance noise, as a sensor (or a scanner) adds it."""
    import numpy as np
    from PIL import Image

    pixels = np.asarray(image, dtype=np.int16)
    pixels += _texture(seed, rng, image.width, image.height, sigma)[..., None]
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
