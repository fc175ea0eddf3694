"""The model: loaded once per process (st.cache_resource, keyed by model, dtype and quantisation), chosen in
the sidebar.

A failed load is cached too (as its one-sentence reason): without network the hub's retries take
minutes, and every rerun would otherwise pay them again. "Retry loading" clears that one entry.
Only models on the server's allow-list are ever loaded (ui/allowlist.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import streamlit as st

from lychee_rerank import DEMO_NAME, DTYPES, QUANTIZE_MODES, ModelLoadError, Reranker

from . import allowlist, engine_text, fmt
from .i18n import t
from .state import SESSION_KEY

log = logging.getLogger("lychee_rerank.app")

MODEL_KEY = "model_name"  # the model in use (session state)
DTYPE_KEY = "model_dtype"
MODEL_INPUT_KEY = "model_input"  # the sidebar's text input
DTYPE_INPUT_KEY = "dtype_input"
QUANTIZE_KEY = "model_quantize"
QUANTIZE_INPUT_KEY = "quantize_input"
REFUSED_KEY = "model_refused"  # the sentence refusing the last name typed, shown under the form
FORM_GENERATION_KEY = "model_form_generation"  # bumped to redraw the form's boxes from the model in use
# The real model is ~17 GB: more than two cached models would fill most GPUs.
MAX_CACHED_MODELS = 2


@dataclass(frozen=True)
class LoadOutcome:
    name: str
    dtype: str
    reranker: Reranker | None = None
    error: str | None = None  # the engine's message (English; worded for the page by ui/engine_text.py)
    quantize: str = "auto"  # as asked for; reranker.info.quantization says what was loaded


@st.cache_resource(show_spinner=False, max_entries=MAX_CACHED_MODELS)
def _load(name: str, dtype: str, quantize: str) -> LoadOutcome:
    try:
        return LoadOutcome(name, dtype, reranker=Reranker.load(name, dtype=dtype, quantize=quantize), quantize=quantize)
    except ModelLoadError as exc:
        return LoadOutcome(name, dtype, error=str(exc), quantize=quantize)
    except Exception as exc:  # never a traceback on the page; the log keeps it
        log.exception("loading %s failed", name)
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return LoadOutcome(name, dtype, error=f"could not load {name}: {first}", quantize=quantize)


def selected() -> tuple[str, str, str]:
    """(model name, dtype, quantisation) for this session: $LYCHEE_MODEL at first, then the sidebar's choice."""
    if MODEL_KEY not in st.session_state:
        st.session_state[MODEL_KEY] = allowlist.initial_model()
    if DTYPE_KEY not in st.session_state:
        st.session_state[DTYPE_KEY] = "auto"
    if QUANTIZE_KEY not in st.session_state:
        st.session_state[QUANTIZE_KEY] = "auto"
    return st.session_state[MODEL_KEY], st.session_state[DTYPE_KEY], st.session_state[QUANTIZE_KEY]


def active() -> LoadOutcome:
    """The session's model, loading it (with a spinner) the first time this process needs it."""
    name, dtype, quantize = selected()
    if not allowlist.is_allowed(name):
        return LoadOutcome(name, dtype, error=allowlist.refusal(name), quantize=quantize)
    with st.spinner(t("loading_model", name=name, dtype=dtype), show_time=True):
        return _load(name, dtype, quantize)


def choose(name: str, dtype: str | None = None, quantize: str | None = None) -> None:
    """Switch this session to another model (used by callbacks)."""
    st.session_state[MODEL_KEY] = name
    if dtype is not None:
        st.session_state[DTYPE_KEY] = dtype
    if quantize is not None:
        st.session_state[QUANTIZE_KEY] = quantize


def use_demo() -> None:
    choose(DEMO_NAME)


def retry() -> None:
    _load.clear(*selected())


def _apply_sidebar_choice(name_key: str, dtype_key: str, quantize_key: str) -> None:
    name = (st.session_state.get(name_key) or "").strip() or allowlist.initial_model()
    if not allowlist.is_allowed(name):
        st.session_state[REFUSED_KEY] = allowlist.refusal(name)
        # The box shows the model in use again: a new box (a new key), never a value written into the
        # old one's state (Streamlit warns about a widget with both a default and a state value).
        st.session_state[FORM_GENERATION_KEY] = st.session_state.get(FORM_GENERATION_KEY, 0) + 1
        return
    st.session_state.pop(REFUSED_KEY, None)
    choose(name, st.session_state.get(dtype_key) or "auto", st.session_state.get(quantize_key) or "auto")


def sidebar_form() -> None:
    """Model name and dtype; applied with the Load button (a half-typed name never starts a load).

    The widgets take their value from the model in use (their keys follow it): Streamlit re-identifies
    main-script widgets when st.navigation's page changes, and they must not fall back to blanks then.
    """
    name, dtype, quantize = selected()
    generation = st.session_state.get(FORM_GENERATION_KEY, 0)
    name_key = f"{MODEL_INPUT_KEY}:{name}" + (f":{generation}" if generation else "")
    dtype_key, quantize_key = f"{DTYPE_INPUT_KEY}:{dtype}", f"{QUANTIZE_INPUT_KEY}:{quantize}"
    with st.sidebar.form("model_form", border=False):
        st.text_input(t("model_input"), value=name, key=name_key,
                      help=t("model_input_help", allowed=", ".join(allowlist.allowed_models())))
        st.selectbox(t("dtype"), DTYPES, index=DTYPES.index(dtype) if dtype in DTYPES else 0, key=dtype_key,
                     help=t("dtype_help"))
        st.selectbox(t("quantize"), QUANTIZE_MODES, index=QUANTIZE_MODES.index(quantize) if quantize in QUANTIZE_MODES else 0,
                     key=quantize_key, help=t("quantize_help"))
        st.form_submit_button(t("load_model"), on_click=_apply_sidebar_choice, args=(name_key, dtype_key, quantize_key))
    refused = st.session_state.get(REFUSED_KEY)
    if refused:
        st.sidebar.error(refused, icon=":material/block:")


def sidebar_info(outcome: LoadOutcome, *, with_reason: bool = True) -> None:
    """What is loaded: name, device, dtype, attention, parameters, load time (or why nothing is; the
    Rerank page says why at length, so there the sidebar keeps it short)."""
    sidebar = st.sidebar
    if outcome.reranker is None:
        sidebar.error(t("model_failed_short", name=outcome.name), icon=":material/error:")
        if with_reason:
            sidebar.caption(fmt.md_escape(engine_text.sentence(outcome.error)))
        if allowlist.is_allowed(DEMO_NAME):
            sidebar.button(t("use_demo"), on_click=use_demo, key="sidebar_use_demo")
        return
    info = outcome.reranker.info
    if info.is_demo:
        sidebar.warning(t("demo_badge"), icon=":material/warning:")
    rows = [
        (t("info_name"), info.name),
        (t("info_device"), info.device),
        (t("info_dtype"), info.dtype),
        (t("info_attention"), info.attention),
        (t("info_parameters"), fmt.count(info.parameters)),
        (t("info_quantization"), info.quantization),
        (t("info_weights_memory"), fmt.size(info.weights_bytes)),
        (t("info_load_time"), fmt.seconds(info.load_seconds)),
    ]
    sidebar.markdown("  \n".join(f"**{label}:** {fmt.md_escape(value)}" for label, value in rows))
    if info.quantization != "none" and info.quantization_reason:  # why auto chose smaller weights
        sidebar.caption(fmt.md_escape(info.quantization_reason))
    own_run = st.session_state.get(SESSION_KEY)  # this session's own run is no news
    if outcome.reranker.busy and not (own_run is not None and own_run.running):
        sidebar.caption(t("model_busy"))


def failure_panel(outcome: LoadOutcome) -> None:
    """On the main page: why the model is missing (one sentence) and the way out (the demo model)."""
    st.error(t("model_error", reason=engine_text.sentence(outcome.error)), icon=":material/error:")
    row = st.container(horizontal=True, gap="small")
    if allowlist.is_allowed(DEMO_NAME):
        row.button(t("use_demo"), on_click=use_demo, type="primary", key="page_use_demo")
    if allowlist.is_allowed(outcome.name):
        row.button(t("retry"), on_click=retry, key="page_retry")
