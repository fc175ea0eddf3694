"""The model card's image path, and its one opt-in shortcut.

Exact (default): the decoded, sanitised image goes through qwen-vl-utils' ``fetch_image`` with its
defaults (rounded to multiples of 28 pixels, 4 to 16,384 visual tokens, PIL bicubic), as the
Lychee-rerank-mm model card does with ``process_vision_info``; the processor then resizes to the
resolution setting. Fast (``preprocess="fast"``): JPEGs are decoded by libjpeg at a reduced DCT
scale (1/2, 1/4, 1/8) that is still at least the size the model will see, then take the same path.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from .images import ImageSize, ImageSource, load_image

PREPROCESS_MODES = ("exact", "fast")
_DCT_SCALES = (8, 4, 2, 1)


def model_card_size(width: int, height: int) -> tuple[int, int]:
    """(width, height) that qwen-vl-utils' fetch_image gives an image of this size, with its defaults."""
    from qwen_vl_utils.vision_process import IMAGE_MAX_TOKEN_NUM, IMAGE_MIN_TOKEN_NUM, SPATIAL_MERGE_SIZE, smart_resize

    factor = 14 * SPATIAL_MERGE_SIZE
    h, w = smart_resize(height, width, factor, IMAGE_MIN_TOKEN_NUM * factor**2, IMAGE_MAX_TOKEN_NUM * factor**2)
    return w, h


def model_card_image(source: ImageSource | Image.Image, reduce_to: tuple[int, int] | None = None) -> Image.Image:
    """Decode and sanitise (EXIF orientation, alpha on white, 16-bit greys, long strips), then
    qwen-vl-utils' fetch_image with the model card's defaults."""
    from qwen_vl_utils import fetch_image

    image = load_image(source) if reduce_to is None else load_image(source, reduce_to=reduce_to)
    if image.mode == "RGB" and image.size == model_card_size(*image.size):
        # fetch_image would only copy it twice (to_rgb, then a resize to the same size): the same pixels.
        return image
    return fetch_image({"image": image})


def processor_pixels(image: Image.Image) -> torch.Tensor:
    """An RGB image as the channels-first uint8 tensor the processor would make of it, bit for bit,
    for less. The processor converts a PIL image with ``np.array`` (Pillow's chunked, packed copy),
    then a permute and a contiguous copy: two full-resolution copies. One copy per band costs about
    half as much (docs/benchmarks.md). Pass the result with ``input_data_format="channels_first"``."""
    if image.mode != "RGB":
        raise ValueError(f"expected an RGB image, got mode {image.mode!r}")
    return torch.from_numpy(np.stack([np.asarray(band) for band in image.split()]))


def jpeg_draft_size(width: int, height: int, target: tuple[int, int]) -> tuple[int, int]:
    """The size libjpeg decodes to when Pillow's ``draft`` is asked for ``target``: the largest DCT
    scale 1/s (s in 8, 4, 2, 1) that keeps both sides at least the target's."""
    ratio = min(width // max(1, target[0]), height // max(1, target[1]))
    scale = next(s for s in _DCT_SCALES if s <= max(1, ratio))
    return -(-width // scale), -(-height // scale)


def draft_target(size: ImageSize, preprocess: str, target: tuple[int, int]) -> tuple[int, int] | None:
    """What to ask ``load_image`` to reduce to: only on the fast path, only for JPEGs (libjpeg's
    scaled decoding), never for strips that get padded."""
    unpadded = (size.width, size.height) == (size.file_width, size.file_height)
    return target if preprocess == "fast" and size.format == "JPEG" and unpadded else None


def decoded_size(size: ImageSize, reduce_to: tuple[int, int] | None) -> tuple[int, int]:
    """The size ``load_image`` returns for an image probed as ``size``."""
    if reduce_to is None:
        return size.width, size.height
    return jpeg_draft_size(size.width, size.height, reduce_to)
