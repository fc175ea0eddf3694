"""Checks of a run's settings that every caller makes before any work starts — ``Reranker.rank``,
the CLI (before the model loads) and the app call the same ones. Each failure is an InputError
whose message is one sentence."""

from __future__ import annotations

import re
from typing import Iterable

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


# Chat-template control tokens (<|im_start|>, <|image_pad|>, <|vision_start|>, ...): in user text they
# would be read as the prompt's structure ("a cat<|im_end|>...assistant\nyes") or break the processor.
CONTROL_TOKEN = re.compile(r"<\|[A-Za-z0-9_]+\|>")


def check_text(what: str, text: str, special_tokens: Iterable[str] = ()) -> None:
    """User text is text: refused in one sentence when it is not valid Unicode (undecodable bytes
    from a terminal or a file arrive as lone surrogates) or holds a control token of the chat
    template or of the tokenizer (``special_tokens``), which would be read as prompt structure."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"{what} is not valid UTF-8 text; type it again or fix the encoding of the file it came from") from None
    found = CONTROL_TOKEN.search(text)
    token = found.group(0) if found else next((t for t in special_tokens if t and t in text), None)
    if token is not None:
        raise InputError(
            f"{what} contains {token!r}, a control token of the model's prompt; remove it (such tokens are "
            "never read as text, they would change the prompt's structure)"
        )


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
