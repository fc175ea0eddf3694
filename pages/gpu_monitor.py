"""GPU monitor page: each GPU's memory, utilisation, temperature and torch allocator, refreshed every
2 seconds, with a short history chart. CPU-only machines get a clear state (process and system
memory), not an error."""

from __future__ import annotations

from collections import deque
from datetime import datetime

import altair as alt
import pandas as pd
import streamlit as st

from lychee_rerank import gpu
from ui import fmt
from ui.i18n import t
from ui.state import SESSION_KEY

REFRESH_S = 2
HISTORY_LEN = 90  # three minutes at one reading every 2 s
GPU_HISTORY_KEY = "gpu_history"
CPU_HISTORY_KEY = "cpu_history"
FREED_KEY = "gpu_freed_bytes"


def _history(key: str) -> deque:
    history = st.session_state.get(key)
    if not isinstance(history, deque):
        history = st.session_state[key] = deque(maxlen=HISTORY_LEN)
    return history


def _chart(history: deque, labels: dict[str, str]) -> None:
    """GB over the last minutes. The x axis has a fixed domain: a scale computed from the data is
    undefined for a moment whenever the chart's data is replaced (Vega then logs "Infinite extent")."""
    if len(history) < 2:
        return
    frame = pd.DataFrame(list(history))
    now = datetime.now()
    frame["seconds"] = [round((stamp - now).total_seconds(), 1) for stamp in frame.pop("time")]
    long = frame.melt("seconds", var_name="series", value_name="GB")
    long["series"] = long["series"].map(labels)
    chart = (
        alt.Chart(long)
        .mark_line()
        .encode(
            x=alt.X("seconds:Q", title=t("seconds_ago"), scale=alt.Scale(domain=[-HISTORY_LEN * REFRESH_S, 0])),
            y=alt.Y("GB:Q", title="GB", scale=alt.Scale(domainMin=0)),
            color=alt.Color("series:N", title=None, legend=alt.Legend(orient="bottom")),
        )
        .properties(height=220)
    )
    st.caption(t("history", n=len(history)))
    st.altair_chart(chart, width="stretch")


def _free_memory() -> None:
    st.session_state[FREED_KEY] = gpu.free_cached_memory()


def _run_status() -> None:
    run = st.session_state.get(SESSION_KEY)
    if run is None or not run.running:
        return
    with run.lock:
        event, total, already = run.progress, len(run.items), run.already_scored
        waiting, place = run.waiting, run.queue_position
    if waiting:
        progress = t("waiting_place", n=place) if place else t("waiting")
    else:
        progress = fmt.progress(event, already + event.done, total) if event else t("starting")
    st.info(t("run_in_progress", progress=progress), icon=":material/sort:")


def _gpu_view(readings) -> None:
    now = datetime.now()
    sample: dict = {"time": now}
    labels: dict[str, str] = {}
    for r in readings:
        sample[f"used{r.index}"] = fmt.gib(r.used_bytes)
        sample[f"alloc{r.index}"] = fmt.gib(r.torch_allocated_bytes)
        labels[f"used{r.index}"] = f"GPU {r.index} · {t('vram_used')}"
        labels[f"alloc{r.index}"] = f"GPU {r.index} · {t('torch_alloc')}"
    history = _history(GPU_HISTORY_KEY)
    history.append(sample)

    freed = st.session_state.pop(FREED_KEY, None)
    if freed is not None:
        st.success(t("freed", amount=fmt.size(freed)), icon=":material/check_circle:")
    for r in readings:
        with st.container(border=True):
            st.markdown(f"#### {fmt.md_escape(t('gpu_label', index=r.index, name=r.name))}")
            c1, c2, c3 = st.columns(3)
            c1.metric(t("vram_used"), f"{fmt.size(r.used_bytes)} / {fmt.size(r.total_bytes)}",
                      f"{r.used_fraction:.0%}", delta_color="off", delta_arrow="off")
            c2.metric(t("util"), f"{r.utilization_pct} %" if r.utilization_pct is not None else t("na"))
            c3.metric(t("temp"), f"{r.temperature_c} °C" if r.temperature_c is not None else t("na"))
            st.progress(min(1.0, r.used_fraction))
            d1, d2, d3 = st.columns(3)
            d1.metric(t("torch_alloc"), fmt.size(r.torch_allocated_bytes))
            d2.metric(t("torch_reserved"), fmt.size(r.torch_reserved_bytes))
            d3.metric(t("torch_peak"), fmt.size(r.torch_peak_bytes))
            if r.high:
                st.warning(
                    t("high_mem", index=r.index, pct=f"{r.used_fraction:.0%}", limit=f"{gpu.HIGH_MEMORY_FRACTION:.0%}"),
                    icon=":material/warning:",
                )
                st.button(t("free_mem"), on_click=_free_memory, key=f"free_cached_{r.index}",
                          icon=":material/mop:")
    _chart(history, labels)


def _cpu_view() -> None:
    memory = gpu.process_memory()
    used = memory.system_total_bytes - memory.system_available_bytes
    history = _history(CPU_HISTORY_KEY)
    history.append({"time": datetime.now(), "rss": fmt.gib(memory.rss_bytes), "system": fmt.gib(used)})
    st.info(t("no_gpu"), icon=":material/memory:")
    c1, c2, c3 = st.columns(3)
    c1.metric(t("rss"), fmt.size(memory.rss_bytes))
    c2.metric(t("sys_used"), f"{fmt.size(used)} / {fmt.size(memory.system_total_bytes)}",
              f"{used / memory.system_total_bytes:.0%}" if memory.system_total_bytes else None, delta_color="off",
              delta_arrow="off")
    c3.metric(t("sys_avail"), fmt.size(memory.system_available_bytes))
    _chart(history, {"rss": t("rss"), "system": t("sys_used")})


@st.fragment(run_every=REFRESH_S)
def _live() -> None:
    _run_status()
    readings = gpu.gpu_readings()
    if readings:
        _gpu_view(readings)
    else:
        _cpu_view()


st.title(t("gpu_title"))
st.caption(t("gpu_intro"))
_live()
