"""Lychee image reranker: the Streamlit app.

    LYCHEE_MODEL=demo streamlit run app.py          # tiny random model: no GPU, no download
    streamlit run app.py                            # the real vec-ai/lychee-rerank-mm

Pages: Rerank (default) and GPU monitor. The sidebar holds the language switch and the model (loaded
once per process, keyed by model and dtype, and only from the server's allow-list; see ui/model.py).
When Streamlit's login is configured, nothing is shown before the user logs in (ui/auth.py).

`streamlit run app.py` serves this file as an ASGI app (it defines ``app = st.App(...)``): the pages
below, plus a route of the app's own that streams large downloads from disk (ui/downloads.py).
Each browser session runs this file as its script (``__main__``).
"""

from __future__ import annotations

import os
import sys

# As the command line does (lychee_rerank/__main__.py), before torch loads OpenMP: idle OpenMP threads
# sleep instead of spinning, leaving the cores to the preprocessing workers. A value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import streamlit as st

from ui import auth, i18n
from ui.i18n import t


def main() -> None:
    # An emoji tab icon: drawn by the browser. A Material icon here would be fetched from a font CDN,
    # which fails offline and tells a third party who opens the app.
    st.set_page_config(page_title="Lychee rerank", page_icon="🔎", layout="wide")

    i18n.language_selector()
    auth.require_login()

    # A first paint while the engine is imported (torch, transformers: seconds, once per process); the
    # model's own load then shows its spinner. Later runs skip it (no flash at the top of the page).
    starting = st.empty()
    if "ui.model" not in sys.modules:
        starting.caption(t("starting_app"))

    from ui import model as model_ui  # after the first paint, on purpose
    from ui import style

    style.apply()
    pages = [
        st.Page("pages/rerank.py", title=t("nav_rerank"), icon=":material/sort:", default=True, url_path="rerank"),
        st.Page("pages/gpu_monitor.py", title=t("nav_gpu"), icon=":material/memory:", url_path="gpu-monitor"),
    ]
    navigation = st.navigation(pages)

    st.sidebar.subheader(t("model_header"))
    model_ui.sidebar_form()
    model_ui.sidebar_info(model_ui.active(), with_reason=navigation is not pages[0])
    starting.empty()

    navigation.run()


if __name__ == "__main__":  # a browser session's script run
    main()
else:  # imported by `streamlit run app.py`, which then serves the app with the routes of its own
    from ui import downloads

    app = st.App(__file__, routes=downloads.routes())
