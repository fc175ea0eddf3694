"""Formatting helpers: sizes, counts, and text that must reach the page as text (never markup)."""

from __future__ import annotations

import re

from lychee_rerank.results import Progress

from .i18n import t

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
    """A duration in the page's language: '4.2 s', '42 s', '4 min 02 s', '1 h 05 min' (秒, 分, 小时)."""
    if value is None:
        return "–"
    if value < 10:
        return t("dur_s", s=f"{max(0.0, value):.1f}")
    whole = round(value)
    if whole < 60:
        return t("dur_s", s=whole)
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return t("dur_min_s", m=minutes, s=f"{secs:02d}")
    hours, minutes = divmod(minutes, 60)
    return t("dur_h_min", h=hours, m=f"{minutes:02d}")


def progress(event: Progress, done: int | None = None, total: int | None = None) -> str:
    """A run's progress line in the page's language: '37/120 · 4.2 img/s · ETA 20 s'. ``done`` and
    ``total`` count the whole run when it is a resume (the event counts this start only)."""
    done = event.done if done is None else done
    total = event.total if total is None else total
    if event.eta_s is None or event.done >= event.total:
        return t("progress_line", done=done, total=total, rate=f"{event.images_per_s:.1f}")
    return t("progress_line_eta", done=done, total=total, rate=f"{event.images_per_s:.1f}", eta=seconds(event.eta_s))
