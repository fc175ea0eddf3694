"""A rerank service in the shape vLLM, Jina and Cohere clients speak (``python -m lychee_rerank
serve``): ``app`` (the ASGI app), ``protocol`` (requests and responses), ``sources`` (where images
come from, confined), ``scheduler`` (the bounded queue and shared passes), ``metrics``."""

from .app import ServiceConfig, create_app
from .sources import SourcePolicy

__all__ = ["ServiceConfig", "SourcePolicy", "create_app"]
