"""Small pieces shared by the pages: the memory readout shown during a run."""

from __future__ import annotations

import streamlit as st

from lychee_rerank import gpu

from . import fmt, i18n
from .i18n import t


def memory_readout() -> None:
    """VRAM per GPU (NVML used/total, torch allocated/reserved/peak); on CPU, process and system memory."""
    readings = gpu.gpu_readings()
    if not readings:
        memory = gpu.process_memory()
        used = memory.system_total_bytes - memory.system_available_bytes
        st.caption(
            f":material/memory: {t('no_gpu_short')} · {t('rss')} {fmt.size(memory.rss_bytes)} · "
            f"{t('sys_used')} {fmt.size(used)} / {fmt.size(memory.system_total_bytes)}"
        )
        return
    for reading in readings:
        st.caption(
            f":material/memory: {fmt.md_escape(t('gpu_label', index=reading.index, name=reading.name))} · "
            f"{t('vram_used')} {fmt.size(reading.used_bytes)} / {fmt.size(reading.total_bytes)} "
            f"({reading.used_fraction:.0%}) · {t('torch_alloc')} {fmt.size(reading.torch_allocated_bytes)} · "
            f"{t('torch_reserved')} {fmt.size(reading.torch_reserved_bytes)} · "
            f"{t('torch_peak')} {fmt.size(reading.torch_peak_bytes)}"
        )


def _copy_choice(widget_key: str, store_key: str) -> None:
    value = st.session_state.get(widget_key)
    if value is not None:
        st.session_state[store_key] = value


def choice(kind: str, label: str, options, *, store_key: str, default, labels: str, container=None, **kwargs):
    """A radio (kind="radio") or segmented control (kind="segmented") with translated option labels.

    Streamlit keeps these widgets' values as their *formatted* labels, so switching the language would
    silently reset them. The value lives in session_state[store_key] instead (kept across languages
    and pages); the widget is keyed per language and starts from it. ``labels`` is the i18n key
    prefix: option ``x`` shows ``t(labels + x)``.
    """
    options = list(options)
    value = st.session_state.get(store_key, default)
    if value not in options:
        value = default
    st.session_state[store_key] = value
    lang = i18n.current()
    widget_key = f"{store_key}__{lang}"
    fmt_func = lambda option: i18n.text(lang, f"{labels}{option}")  # noqa: E731 - bound to lang
    target = container or st
    common = dict(key=widget_key, format_func=fmt_func, on_change=_copy_choice, args=(widget_key, store_key))
    if kind == "segmented":
        target.segmented_control(label, options, default=value, **common, **kwargs)
    else:
        target.radio(label, options, index=options.index(value), **common, **kwargs)
    return st.session_state[store_key]
