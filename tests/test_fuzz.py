"""Fuzzing the decoder: mutated headers and bytes of eight formats either decode — to the size the
header promised — or fail with an ImageError for that file. Never another exception, never an
allocation beyond the pixel limit. Seeded and bounded (a few seconds)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from imagegen import encode, photo
from lychee_rerank.images import ImageError, load_image, probe_image

SEED = 20240609
CASES_PER_FORMAT = 400
# Small enough that any allocation the fuzzer can cause stays small; every header claiming more
# must be refused before decoding.
PIXEL_LIMIT = 1_000_000


def originals() -> dict[str, bytes]:
    image = photo(24, 16, seed=5)
    return {
        "PNG": encode(image),
        "JPEG": encode(image, "JPEG"),
        "GIF": encode(image.convert("P"), "GIF"),
        "WEBP": encode(image, "WEBP"),
        "TIFF": encode(image, "TIFF", compression="tiff_lzw"),
        "BMP": encode(image, "BMP"),
        "PPM": encode(image, "PPM"),
        "ICO": encode(image, "ICO", sizes=[(16, 16)]),
    }


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """One of: header bytes flipped, a header field set to an extreme, bytes flipped anywhere,
    truncated, a chunk duplicated or removed."""
    out = bytearray(data)
    header = min(len(out), 64)
    kind = rng.integers(6)
    if kind == 0:
        for _ in range(rng.integers(1, 4)):
            out[rng.integers(header)] = rng.integers(256)
    elif kind == 1:  # size fields: a 16- or 32-bit extreme
        at = int(rng.integers(max(1, header - 4)))
        width = int(rng.choice([2, 4]))
        out[at : at + width] = bytes([int(rng.choice([0x00, 0x7F, 0xFF]))]) * width
    elif kind == 2:
        for _ in range(rng.integers(1, 8)):
            out[rng.integers(len(out))] = rng.integers(256)
    elif kind == 3:
        out = out[: rng.integers(1, len(out))]
    elif kind == 4:
        start = int(rng.integers(len(out)))
        out[start:start] = out[start : start + int(rng.integers(1, 64))]
    else:
        start = int(rng.integers(len(out)))
        del out[start : start + int(rng.integers(1, 64))]
    return bytes(out)


def test_mutated_files_decode_to_the_probed_size_or_fail_with_an_image_error(monkeypatch, capfd):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", PIXEL_LIMIT)
    rng = np.random.default_rng(SEED)
    outcomes = {"decoded": 0, "refused": 0}
    for fmt, data in originals().items():
        for case in range(CASES_PER_FORMAT):
            sample = mutate(data, rng)
            where = f"{fmt} case {case} (seed {SEED})"
            try:
                probed = probe_image(sample)
            except ImageError:
                probed = None
            try:
                image = load_image(sample)
            except ImageError as exc:
                assert str(exc) and "\n" not in str(exc), where
                outcomes["refused"] += 1
                continue
            outcomes["decoded"] += 1
            assert probed is not None, f"{where}: loads but cannot be probed"
            assert image.size == (probed.width, probed.height), where
            assert image.mode == "RGB", where
            assert image.width * image.height <= PIXEL_LIMIT, where
    # The fuzzer reaches both outcomes (a mutation scheme that broke every file would test little).
    assert outcomes["decoded"] > 50 and outcomes["refused"] > 50, outcomes
    # Nothing reached stderr behind the caller's back (libtiff and friends write to it directly).
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "GIF", "PPM", "TIFF"])
def test_a_header_promising_more_pixels_than_the_limit_is_refused_before_decoding(fmt, monkeypatch):
    big = encode(Image.new("L" if fmt == "GIF" else "RGB", (1100, 1000)), fmt)  # 1.1 M pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", PIXEL_LIMIT)
    for read in (probe_image, load_image):
        with pytest.raises(ImageError, match="too large"):
            read(big)
