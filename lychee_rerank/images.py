"""Image decoding and sanitising: any decodable file becomes an RGB image the processor accepts;
anything else becomes a one-sentence error for that file alone.

The rule: ``probe_image`` and ``load_image`` either succeed or raise ``ImageError`` — whatever the
file holds (missing, unreadable, not a regular file, not an image, truncated, corrupt, too large),
no other exception escapes them. Without ``reduce_to``, ``probe_image(src)`` (header only) gives the
exact ``width``/``height`` of the image ``load_image(src)`` returns.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import io
import math
import os
import re
import stat
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO, Iterator, Union

from PIL import Image, UnidentifiedImageError, features

# A path, bytes, a file object, a decoded image, or an object whose ``open()`` returns a binary file
# or raises ImageError (lychee_rerank.confine.DataFile: a server file checked where it is opened).
ImageSource = Union[str, os.PathLike, bytes, bytearray, BinaryIO, Image.Image, object]

# Qwen's resize (smart_resize) refuses aspect ratios above 200; wider strips are padded up to this.
MAX_ASPECT_RATIO = 200
# A padded strip never exceeds this many pixels (nor Pillow's own limit, if lower): a longer strip
# is shrunk before it is padded, so a 3 KB 1,000,000 x 1 PNG cannot become a 14 GiB canvas. The
# figure is Qwen2.5-VL's own largest max_pixels (16384 visual tokens): nothing larger is ever used.
MAX_STRIP_CANVAS_PIXELS = 16384 * 28 * 28
# Canvas colour for transparent pixels and for padding long strips.
BACKGROUND = (255, 255, 255)
_READABLE_SUFFIXES = {
    ".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".jfif", ".pjpeg", ".pjp", ".ico",
    ".ppm", ".pgm", ".pbm", ".tga",
}
# Image formats people keep photos in that this Pillow may not read: named in the skip reason.
_OTHER_IMAGE_FORMATS = {".heic": "HEIC", ".heif": "HEIF", ".avif": "AVIF", ".jxl": "JPEG XL", ".svg": "SVG"}


def _reads_avif() -> bool:
    try:
        return bool(features.check_module("avif"))
    except ValueError:  # Pillow before 11.2 has no AVIF decoder
        return False


IMAGE_SUFFIXES = frozenset(
    _READABLE_SUFFIXES
    | ({".avif"} if _reads_avif() else set())
    # A plugin such as pillow-heif registers the suffixes it adds.
    | (set(_OTHER_IMAGE_FORMATS) & set(Image.registered_extensions()))
)
# EXIF orientation -> the transpose that shows the image upright (ImageOps.exif_transpose's table).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# EXIF orientations 5-8 rotate by 90 degrees: width and height swap.
_TRANSPOSED_ORIENTATIONS = frozenset({5, 6, 7, 8})
# Formats whose decoder can scale by 1/2, 1/4, 1/8 while decoding (Image.draft).
_DRAFT_FORMATS = frozenset({"JPEG", "MPO"})
_FILE_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a named pipe"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a device"),
    (stat.S_ISBLK, "a device"),
)

# Pillow reports oddities it recovers from (corrupt EXIF, over-long tags, an icon of another size,
# sizes between 1x and 2x its pixel limit) as warnings that would reach stderr without the file's
# name. They are dropped for the whole process: catch_warnings() per file is not thread-safe, and
# images are decoded in worker threads. A file Pillow cannot recover from raises instead and gets
# its own ImageError; the pixel limit is checked explicitly in _opened().
_PILLOW_WARNINGS = (UserWarning, Image.DecompressionBombWarning)


def _drop_pillow_warnings() -> None:
    """Install the filters unless present (a catch_warnings() block around our import, as pytest
    has, would have removed them; re-adding an existing one would move it before the caller's)."""
    module = re.compile(r"PIL\.")
    for category in _PILLOW_WARNINGS:
        if ("ignore", None, category, module, 0) not in warnings.filters:
            warnings.filterwarnings("ignore", category=category, module=module.pattern)


def _silence_libtiff() -> None:
    """libtiff prints its errors about a malformed TIFF to stderr itself ("tempfile.tif: Using code
    not yet in table."), without the file's name; Pillow routes only its warnings. The error is
    still raised (and becomes this file's ImageError): only the stray line goes. Best effort: the
    copy of libtiff Pillow uses is found among the libraries loaded (Linux), else by name."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "/libtiff" in line}
    except OSError:
        paths = set()
    if not paths and (found := ctypes.util.find_library("tiff")):
        paths = {found}
    for path in paths:
        try:
            libtiff = ctypes.CDLL(path)
            libtiff.TIFFSetErrorHandler(None)
            libtiff.TIFFSetErrorHandlerExt(None)
        except (OSError, AttributeError):
            pass


_silence_libtiff()


class ImageError(ValueError):
    """A file that cannot be scored; the message is one sentence meant for the user."""


@dataclass(frozen=True)
class ImageSize:
    """Pixel size of the decoded, sanitised image (orientation applied, strips shrunk and padded),
    before any resizing for the model; and the file's own size (orientation applied), for people."""

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


# -- opening ------------------------------------------------------------------------------------
def file_kind(mode: int) -> str | None:
    """'a folder', 'a named pipe', ... for what is not a regular file (None for a regular file)."""
    return next((kind for test, kind in _FILE_KINDS if test(mode)), None)


def _unreadable(path: str, exc: Exception) -> ImageError:
    if isinstance(exc, FileNotFoundError):
        if os.path.islink(path):
            return ImageError("broken link: it points to nothing")
        return ImageError(f"file not found: {path}")
    if isinstance(exc, PermissionError):
        return ImageError("permission denied: the file cannot be read")
    if isinstance(exc, OSError):
        return ImageError(f"the file cannot be read ({exc.strerror or exc})")
    return ImageError("the file name is not valid")  # ValueError: a NUL in the name


def _open_file(path: str) -> BinaryIO:
    """Open a regular file for reading, or say in one sentence why it cannot be."""
    try:
        info = os.stat(path)
    except (OSError, ValueError) as exc:
        raise _unreadable(path, exc) from None
    kind = file_kind(info.st_mode)
    if kind is not None:
        raise ImageError(f"not a regular file ({kind})")
    if info.st_size == 0:
        raise ImageError("the file is empty")
    try:
        # O_NONBLOCK: should the file be swapped for a pipe after the check, open() must not hang.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as exc:
        raise _unreadable(path, exc) from None
    file = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        file.close()
        raise ImageError("not a regular file")
    return file


def read_file(path: str | os.PathLike) -> bytes:
    """A regular file's bytes (opened with the same checks as for decoding), or ImageError: for
    callers that hash what they decode (the collection index)."""
    with _open_file(os.fspath(path)) as file:
        try:
            return file.read()
        except OSError as exc:
            raise _unreadable(os.fspath(path), exc) from None


def _file_object(source: ImageSource) -> BinaryIO:
    if isinstance(source, (str, os.PathLike)):
        return _open_file(os.fspath(source))
    opener = getattr(source, "open", None)
    if callable(opener):  # a source that checks where it is opened (lychee_rerank.confine.DataFile)
        return opener()
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        try:
            data = source.getvalue() if hasattr(source, "getvalue") else source.read()
        except (OSError, ValueError) as exc:
            raise ImageError(f"the upload cannot be read ({exc})") from None
    if not data:
        raise ImageError("the file is empty")
    return io.BytesIO(data)


def read_bytes(source: ImageSource) -> bytes | None:
    """A file's or an upload's encoded bytes, read once (what is hashed is then what is decoded); None
    for an already decoded image. Raises ImageError like load_image."""
    if isinstance(source, Image.Image):
        return None
    with _file_object(source) as file:
        try:
            return file.read()
        except OSError as exc:
            raise _unreadable(os.fspath(source) if isinstance(source, (str, os.PathLike)) else "", exc) from None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:199] + "…"


@contextmanager
def _image_errors() -> Iterator[None]:
    """Every failure while opening or decoding becomes an ImageError for this file alone."""
    try:
        yield
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _too_large() from exc
    except UnidentifiedImageError as exc:
        raise ImageError("not an image, or an image format that cannot be read") from exc
    except MemoryError as exc:
        raise ImageError("not enough memory to decode this image") from exc
    except Exception as exc:
        # Pillow's decoders raise OSError, ValueError, SyntaxError, EOFError, struct.error,
        # IndexError, ... on malformed data: all of them mean the same thing to the user.
        raise ImageError(f"the image data is truncated or corrupt ({_one_line(exc)})") from exc


def _too_large() -> ImageError:
    return ImageError(f"image too large to decode safely (over {Image.MAX_IMAGE_PIXELS:,} pixels)")


@contextmanager
def _opened(source: ImageSource) -> Iterator[Image.Image]:
    """The image opened lazily (header only); the file is closed on exit. Errors: ImageError."""
    _drop_pillow_warnings()
    if isinstance(source, Image.Image):
        _check_size(source, pixel_limit=False)  # already decoded: the memory is spent
        yield source
        return
    with _file_object(source) as file, _image_errors():
        with Image.open(file) as image:
            _check_size(image)
            yield image


def _check_size(image: Image.Image, pixel_limit: bool = True) -> None:
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageError("the image has no pixels")
    if pixel_limit and Image.MAX_IMAGE_PIXELS and width * height > Image.MAX_IMAGE_PIXELS:
        raise _too_large()


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation (1-8) read from the header. Image.getexif() itself, not PNG's override,
    which decodes the whole image to look for EXIF after the pixels: probing stays header-only, and
    probe and load use this one reading so they always agree."""
    try:
        value = int(Image.Image.getexif(image).get(0x0112, 1))
    except Exception:  # malformed EXIF must not cost the image
        return 1
    return value if value in _UPRIGHT else 1


# -- sizes --------------------------------------------------------------------------------------
def _padded_short_side(long: int, short: int) -> int:
    """The short side after padding, so that both resizes of the model card's path accept the
    image: qwen-vl-utils' (aspect ratio at most MAX_ASPECT_RATIO) and then the processor's, after
    qwen-vl-utils has rounded both sides to multiples of 28 (which can push the ratio past it)."""
    padded = max(short, math.ceil(long / MAX_ASPECT_RATIO))
    while not _model_card_accepts(long, padded):
        padded = math.ceil(padded * 1.01) + 1
    return padded


def _model_card_accepts(long: int, short: int) -> bool:
    from qwen_vl_utils.vision_process import smart_resize

    try:
        resized = smart_resize(short, long, factor=28)
    except ValueError:
        return False
    return max(resized) <= MAX_ASPECT_RATIO * min(resized)


@functools.lru_cache(maxsize=8)
def _strip_length_limit(canvas: int) -> int:
    """The longest side a strip keeps so that its padded canvas holds at most ``canvas`` pixels."""
    length = math.isqrt(canvas * MAX_ASPECT_RATIO)
    while length > MAX_ASPECT_RATIO and length * _padded_short_side(length, 1) > canvas:
        length = length * 199 // 200
    return length


def _strip_sizes(width: int, height: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(size after shrinking, size after padding) for an image of this size. A strip (aspect ratio
    above MAX_ASPECT_RATIO) too long for the canvas limit is shrunk first; then the short side of
    any image the model card's path would refuse is padded."""
    long, short = max(width, height), min(width, height)
    if long > MAX_ASPECT_RATIO * short:
        limit = _strip_length_limit(min(MAX_STRIP_CANVAS_PIXELS, Image.MAX_IMAGE_PIXELS or MAX_STRIP_CANVAS_PIXELS))
        if long > limit:
            short, long = max(1, round(short * limit / long)), limit
    padded = _padded_short_side(long, short)
    if width >= height:
        return (long, short), (long, padded)
    return (short, long), (padded, long)


def padded_size(width: int, height: int) -> tuple[int, int]:
    """The size load_image returns for an image of this (oriented) size."""
    return _strip_sizes(width, height)[1]


def probe_image(source: ImageSource) -> ImageSize:
    """The size the model will see, read from the header alone (cheap: no pixel decoding)."""
    with _opened(source) as image:
        width, height = image.size
        if _orientation(image) in _TRANSPOSED_ORIENTATIONS:
            width, height = height, width
    return ImageSize(*padded_size(width, height), file_width=width, file_height=height, format=image.format)


# -- decoding -----------------------------------------------------------------------------------
def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB; transparency is composited on white."""
    mode = image.mode
    if mode == "RGB":
        return image  # no copy: a 12-MP photo's copy costs more than its decoding
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


def _fit_strip(image: Image.Image) -> Image.Image:
    shrunk, padded = _strip_sizes(*image.size)
    if shrunk != image.size:
        image = image.resize(shrunk, Image.Resampling.BOX)
    if padded == image.size:
        return image
    canvas = Image.new("RGB", padded, BACKGROUND)
    canvas.paste(image, ((padded[0] - image.width) // 2, (padded[1] - image.height) // 2))
    return canvas


def load_image(source: ImageSource, *, reduce_to: tuple[int, int] | None = None) -> Image.Image:
    """Decode fully into an RGB image ready for the processor, or raise ImageError.

    ``reduce_to`` (width, height, upright as the model sees it): a JPEG is decoded at the smallest
    DCT scale (1/2, 1/4, 1/8) whose result is still at least that size — much less work for a
    large photo that the processor will shrink anyway. Other formats ignore it.
    """
    with _opened(source) as image, _image_errors():
        orientation = _orientation(image)
        if reduce_to and image.format in _DRAFT_FORMATS and not isinstance(source, Image.Image):
            width, height = (max(1, int(side)) for side in reduce_to)
            if orientation in _TRANSPOSED_ORIENTATIONS:  # draft works in the file's own frame
                width, height = height, width
            image.draft("RGB", (width, height))
        if getattr(image, "is_animated", False):
            image.seek(0)  # animated files: the first frame
        image.load()
        rgb = _to_rgb(image)
        if orientation in _UPRIGHT:
            rgb = rgb.transpose(_UPRIGHT[orientation])
        return _fit_strip(rgb)


def is_image_path(path: str | os.PathLike) -> bool:
    """Whether a file name has the suffix of an image format this Pillow reads."""
    return os.path.splitext(path)[1].lower() in IMAGE_SUFFIXES


def unsupported_format(path: str | os.PathLike) -> str | None:
    """The name of a known image format this Pillow cannot read ('HEIC'), judged by the suffix."""
    suffix = os.path.splitext(path)[1].lower()
    return None if suffix in IMAGE_SUFFIXES else _OTHER_IMAGE_FORMATS.get(suffix)


def thumbnail(source: ImageSource, max_side: int = 256) -> bytes:
    """A small JPEG of the image as the model sees it (for galleries: never ship full-size images)."""
    image = load_image(source)
    image.thumbnail((max_side, max_side))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()
