"""Shared fixtures: the demo model (built once per session in a temporary cache) and test images."""

from __future__ import annotations

import os

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
