"""Shared fixtures: the demo model (built once per session in a temporary cache), test images, and
the app driven headlessly by Streamlit's AppTest."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from imagegen import photo

# Tests never reach the network: a hub id must fail fast instead of timing out.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def demo_cache(tmp_path_factory):
    """Every test (and every subprocess it starts) shares one demo-model cache, built once."""
    cache = tmp_path_factory.getbasetemp() / "lychee-cache"
    previous = os.environ.get("LYCHEE_CACHE")
    os.environ["LYCHEE_CACHE"] = str(cache)
    yield cache
    if previous is None:
        os.environ.pop("LYCHEE_CACHE", None)
    else:
        os.environ["LYCHEE_CACHE"] = previous


@pytest.fixture(scope="session")
def reranker(demo_cache):
    from lychee_rerank import Reranker

    return Reranker.load("demo", dtype="float32")


@pytest.fixture
def some_photos():
    """Eight photos of different sizes and shapes (so batches pad and sort)."""
    sizes = [(64, 48), (120, 90), (40, 200), (300, 220), (56, 56), (90, 140), (33, 77), (150, 60)]
    return [photo(w, h, seed=i) for i, (w, h) in enumerate(sizes)]


@pytest.fixture
def app(monkeypatch, demo_cache):
    """The app's first page, run once by AppTest on the demo model."""
    from streamlit.runtime.pages_manager import PagesManager
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("LYCHEE_MODEL", "demo")
    monkeypatch.setenv("LYCHEE_CACHE", str(demo_cache))
    # `streamlit run` stops treating pages/ as an old-style page directory once the app calls
    # st.navigation (for the whole process). AppTest resets that flag before every run, which makes
    # its reruns execute the page alone, without app.py; keep it as the real server has it.
    original_init = PagesManager.__init__

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        PagesManager.uses_pages_directory = False

    monkeypatch.setattr(PagesManager, "__init__", init)
    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "app.py"), default_timeout=60)
    at.run()
    assert not at.exception
    return at
