"""Formatting helpers: sizes, counts, and text that must reach the page as text (never markup)."""

from __future__ import annotations

import re

from lychee_rerank.results import format_seconds

# Every ASCII punctuation character may be backslash-escaped in CommonMark; escaping them all keeps
# user text (file names, queries) from becoming links, images, emphasis, LaTeX ($) or colour
# directives (:red[...]). Streamlit never renders raw HTML without unsafe_allow_html, which this
# app never uses.
_MARKDOWN_SPECIALS = re.compile(r"([!-/:-@\[-`{-~])")


def md_escape(text: object) -> str:
    """Text for st.markdown/st.caption that renders literally, on one line."""
    flat = " ".join(str(text).split())
    return _MARKDOWN_SPECIALS.sub(r"\\\1", flat)


def sentence(message: str) -> str:
    """An engine message ('could not load x: ...') as a sentence: capital first letter, final stop."""
    message = " ".join(str(message).split())
    if not message:
        return message
    message = message[0].upper() + message[1:]
    return message if message.endswith((".", "!", "?", "。", "！", "？")) else message + "."


def size(n: float | int | None) -> str:
    """Bytes for people: '512 B', '12.3 KB', '4.5 MB', '17.2 GB' (decimal units, as GPU tools show)."""
    if n is None:
        return "–"
    n = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover - unreachable


def gib(n: int | float) -> float:
    return round(n / 1e9, 3)


def count(n: int | None) -> str:
    """Parameter counts: '395.7 K', '8.29 B'."""
    if n is None:
        return "–"
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}" if unit == "B" else f"{n / scale:.1f} {unit}"
    return str(n)


def seconds(value: float | None) -> str:
    if value is None:
        return "–"
    if value < 10:
        return f"{value:.1f} s"
    return format_seconds(value)
