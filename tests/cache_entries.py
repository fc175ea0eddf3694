"""Deterministic feature-cache entries, for the store's tests and the writer processes they start."""

from __future__ import annotations

import torch

from lychee_rerank.feature_cache import Features, content_digest


def key_of(name: str) -> str:
    return content_digest(name.encode())


def entry(key: str, rows: int = 64) -> Features:
    """The entry a key gets: what a reader checks a whole entry against."""
    generator = torch.Generator().manual_seed(int(key[:8], 16))
    return Features(torch.randn(rows, 32, generator=generator), torch.tensor([[1, 2, 2 * rows]]))
