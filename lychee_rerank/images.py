"""Image decoding and sanitising: any decodable file becomes an RGB image the processor accepts;
anything else becomes a one-sentence error for that file alone."""

from __future__ import annotations

import io
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Union

from PIL import Image, ImageOps, UnidentifiedImageError

ImageSource = Union[str, os.PathLike, bytes, bytearray, BinaryIO, Image.Image]

# Qwen's resize (smart_resize) refuses aspect ratios above 200; wider strips are padded up to this.
MAX_ASPECT_RATIO = 200
# Canvas colour for transparent pixels and for padding long strips.
BACKGROUND = (255, 255, 255)
IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".jfif", ".pjpeg", ".pjp", ".ico", ".ppm", ".pgm", ".pbm", ".tga"}
)
# EXIF orientations 5-8 rotate by 90 degrees: width and height swap.
_TRANSPOSED_ORIENTATIONS = frozenset({5, 6, 7, 8})


class ImageError(ValueError):
    """A file that cannot be scored; the message is one sentence meant for the user."""


@dataclass(frozen=True)
class ImageSize:
    """Pixel size of the decoded, sanitised image (orientation applied, strips padded), before any
    resizing for the model; and the file's own size (orientation applied), for people."""

    width: int
    height: int
    file_width: int = 0
    file_height: int = 0
    format: str | None = None  # Pillow's name of the file format ("JPEG", "PNG", ...)


def source_name(source: ImageSource, index: int) -> str:
    """A display name for an input: the path as given, an upload's file name, or its position."""
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    name = getattr(source, "name", None) or getattr(source, "filename", None)
    if isinstance(name, str) and name:
        return name
    return f"image {index + 1}"


def _open(source: ImageSource) -> Image.Image:
    """Open (lazily: header only) with every failure mapped to one clear sentence."""
    if isinstance(source, Image.Image):
        return source
    try:
        if isinstance(source, (str, os.PathLike)):
            path = Path(source)
            if not path.is_file():
                raise ImageError(f"file not found: {path}")
            if path.stat().st_size == 0:
                raise ImageError("the file is empty")
            fp: BinaryIO | str = str(path)
        elif isinstance(source, (bytes, bytearray)):
            if not source:
                raise ImageError("the file is empty")
            fp = io.BytesIO(source)
        else:
            data = source.getvalue() if hasattr(source, "getvalue") else source.read()
            if not data:
                raise ImageError("the file is empty")
            fp = io.BytesIO(data)
        with warnings.catch_warnings():
            # Pillow only warns between 1x and 2x its pixel limit; treat both as a bomb.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(fp)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"image too large to decode safely (over {Image.MAX_IMAGE_PIXELS:,} pixels)") from exc
    except UnidentifiedImageError as exc:
        raise ImageError("not an image, or an image format that cannot be read") from exc
    except OSError as exc:
        raise ImageError(f"the image data is truncated or corrupt ({exc})") from exc


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(0x0112, 1))
    except Exception:  # malformed EXIF must not cost the image; exif_transpose tolerates it too
        return 1


def padded_size(width: int, height: int) -> tuple[int, int]:
    """Size after padding the short side so that both resizes of the model card's path accept the
    image: qwen-vl-utils' (aspect ratio at most MAX_ASPECT_RATIO) and then the processor's, after
    qwen-vl-utils has rounded both sides to multiples of 28 (which can push the ratio past it)."""
    long, short = max(width, height), min(width, height)
    padded = max(short, math.ceil(long / MAX_ASPECT_RATIO))
    while not _model_card_accepts(long, padded):
        padded = math.ceil(padded * 1.01) + 1
    if padded == short:
        return width, height
    return (width, padded) if width >= height else (padded, height)


def _model_card_accepts(long: int, short: int) -> bool:
    from qwen_vl_utils.vision_process import smart_resize

    try:
        resized = smart_resize(short, long, factor=28)
    except ValueError:
        return False
    return max(resized) <= MAX_ASPECT_RATIO * min(resized)


def probe_image(source: ImageSource) -> ImageSize:
    """The size the model will see, read from the header alone (cheap: no pixel decoding)."""
    image = _open(source)
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageError("the image has no pixels")
    if _orientation(image) in _TRANSPOSED_ORIENTATIONS:
        width, height = height, width
    return ImageSize(*padded_size(width, height), file_width=width, file_height=height, format=image.format)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB; transparency is composited on white."""
    mode = image.mode
    if mode == "P" or mode == "PA":
        image = image.convert("RGBA")
        mode = image.mode
    if mode in ("RGBA", "LA", "La", "RGBa"):
        canvas = Image.new("RGB", image.size, BACKGROUND)
        rgba = image.convert("RGBA")
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    if mode.startswith("I;16") or mode in ("I", "F"):
        # High-bit-depth grey: scale to 8 bits instead of letting convert() clip everything to white.
        gray = image.convert("F") if mode != "F" else image
        lo, hi = gray.getextrema()
        if mode.startswith("I;16"):
            scale, lo = 255.0 / 65535.0, 0.0
        else:
            scale = 255.0 / (hi - lo) if hi > lo else 1.0
        gray = gray.point(lambda v: (v - lo) * scale)
        return gray.convert("L").convert("RGB")
    return image.convert("RGB")


def _pad_strip(image: Image.Image) -> Image.Image:
    width, height = padded_size(*image.size)
    if (width, height) == image.size:
        return image
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    canvas.paste(image, ((width - image.width) // 2, (height - image.height) // 2))
    return canvas


def load_image(source: ImageSource) -> Image.Image:
    """Decode fully into an RGB image ready for the processor, or raise ImageError."""
    image = _open(source)
    try:
        if getattr(image, "is_animated", False):
            image.seek(0)  # animated files: the first frame
        image.load()
        image = ImageOps.exif_transpose(image) or image
        image = _to_rgb(image)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"image too large to decode safely (over {Image.MAX_IMAGE_PIXELS:,} pixels)") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        reason = str(exc) or type(exc).__name__
        raise ImageError(f"the image data is truncated or corrupt ({reason})") from exc
    if image.width < 1 or image.height < 1:
        raise ImageError("the image has no pixels")
    return _pad_strip(image)


def is_image_path(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES



def thumbnail(source: ImageSource, max_side: int = 256) -> bytes:
    """A small JPEG of the image as the model sees it (for galleries: never ship full-size images)."""
    image = load_image(source)
    image.thumbnail((max_side, max_side))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()
