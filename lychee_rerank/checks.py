"""Checks of a run's settings that every caller makes before any work starts — ``Reranker.rank``,
the CLI (before the model loads) and the app call the same ones. Each failure is an InputError
whose message is one sentence."""

from __future__ import annotations

from PIL import Image

from .images import ImageError, ImageSource, load_image

# One visual token is a 28 x 28 pixel patch after merging (Qwen2.5-VL).
PIXELS_PER_TOKEN = 28 * 28


class InputError(ValueError):
    """A bad argument to a run; the message is one sentence meant for the user."""


def check_query(query: str | None, has_query_image: bool) -> str:
    """The query without surrounding blanks; blank is fine when there is a query image."""
    query = (query or "").strip()
    if not query and not has_query_image:
        raise InputError("type a query (or give a query image) to rank the images against")
    return query


def check_pixels(min_pixels: int, max_pixels: int) -> None:
    """The processor's resolution bounds: positive, and max at least min."""
    if min_pixels <= 0:
        raise InputError(f"min pixels must be positive, not {min_pixels}")
    if max_pixels < min_pixels:
        raise InputError(
            f"max pixels ({max_pixels:,}) must be at least min pixels ({min_pixels:,}, "
            f"{min_pixels // PIXELS_PER_TOKEN} visual tokens of {PIXELS_PER_TOKEN} pixels)"
        )


def load_query_image(source: ImageSource) -> Image.Image:
    """The decoded query image, or InputError saying why it cannot be used."""
    try:
        return load_image(source)
    except ImageError as exc:
        raise InputError(f"the query image cannot be used: {exc}") from exc
