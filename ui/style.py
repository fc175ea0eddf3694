"""The app's style sheet (ui/style.css), and the Chinese for the words Streamlit draws itself.

Streamlit 1.67 has no setting for the language of its own widgets: the file uploader's button
("Upload", "Upload directories") and its note ("200MB per file • PNG, JPG") are English in its
frontend code. In Chinese, the page hides those words and draws its own in their place with CSS
(``content`` of a pseudo-element). The note that shows only while files are dragged over the box
has no handle to hold it by, and stays English.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from . import i18n
from .media import UPLOAD_TYPES

STYLE = Path(__file__).with_name("style.css")
_DROPZONE = '[data-testid="stFileUploaderDropzone"]'
_BUTTON_TEXT = ' button [data-testid="stMarkdownContainer"]'
_NOTE = '[data-testid="stFileUploaderDropzoneInstructions"]'


PANEL_BACKGROUND = {"light": "#ffffff", "dark": "#0e1117"}  # Streamlit's page backgrounds


def apply() -> None:
    """Inject the style sheet (style-only HTML takes no room on the page), in the page's language."""
    st.html(STYLE)
    theme = getattr(getattr(st.context, "theme", None), "type", None) or "light"
    panel = f'[data-testid="stLayoutWrapper"]:has(.st-key-live_panel) {{ background-color: {PANEL_BACKGROUND.get(theme, "#ffffff")}; }}'
    extra = uploader_css("zh") if i18n.current() == "zh" else ""
    st.html(f"<style>{panel}\n{extra}</style>")


def uploader_css(lang: str) -> str:
    """CSS that words the file uploader's own texts in ``lang``."""
    limit = i18n.text(lang, "uploader_limit", mb=st.get_option("server.maxUploadSize"))
    types = ", ".join(dict.fromkeys(t.upper().replace("JPEG", "JPG").replace("TIFF", "TIF") for t in UPLOAD_TYPES))
    return "\n".join([
        f"{_DROPZONE}{_BUTTON_TEXT} p, {_NOTE} span {{ display: none; }}",
        f'{_DROPZONE}{_BUTTON_TEXT}::after {{ content: "{i18n.text(lang, "uploader_button")}"; }}',
        f'{_DROPZONE}:has(input[webkitdirectory]){_BUTTON_TEXT}::after '
        f'{{ content: "{i18n.text(lang, "uploader_folder_button")}"; }}',
        f'{_NOTE} div::after {{ content: "{limit} • {types}"; }}',
    ])
