"""The wire format, as vLLM's ``/rerank`` (which follows Jina's and Cohere's rerank APIs) and
``/score`` speak it: requests parsed into what the engine needs, responses built in the same shape.

Requests. ``query``: a string, or ``{"content": [parts]}`` with text parts and at most one image
part (the query image). ``documents``: a list whose items are each one document, or a single
document (vLLM's current reading). A document is an image URL string, ``{"content": [parts]}``
holding exactly one ``{"type": "image_url", "image_url": {"url": ...}}`` part, or Jina's
``{"image": url-or-base64}``. ``top_n`` (0 or absent: all), ``return_documents`` (default true:
vLLM always returns them), ``instruction`` (ours: vLLM has no such field), ``model`` (absent, or a
served name). Unknown fields are ignored, as clients of one API send their own extras.

A document this reranker cannot score (text, no image, a video, ...) is not a bad request: it gets
an entry in the response's ``errors`` list and the other documents are scored. Only when no
document is usable is the request refused, with the first document's reason.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass

from .sources import bare_base64, is_reference


class RequestError(Exception):
    """A request refused whole: an HTTP status and one sentence."""

    def __init__(self, message: str, status: int = 400, param: str | None = None):
        super().__init__(message)
        self.message, self.status, self.param = message, status, param


ERROR_TYPES = {400: "BadRequestError", 401: "AuthenticationError", 404: "NotFoundError", 405: "MethodNotAllowed",
               413: "RequestTooLarge", 500: "InternalServerError", 503: "ServiceUnavailable"}


def error_body(message: str, status: int, param: str | None = None) -> dict:
    """vLLM's (OpenAI's) error shape: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, "Error"), "param": param, "code": status}}


@dataclass
class Document:
    """One document of a request: where its image is, or why it has none usable."""

    index: int
    echo: dict  # what results[].document shows (vLLM's RerankDocument)
    url: str | None = None  # what names its image: a URL or a path
    data: object = None  # once fetched: bytes, or a confined data-folder file (lychee_rerank.confine.DataFile)
    error: str | None = None


@dataclass
class Query:
    text: str = ""
    image_url: str | None = None


@dataclass
class RerankCall:
    query: Query
    documents: list[Document]
    model: str | None = None
    top_n: int = 0  # 0: all
    return_documents: bool = True
    instruction: str | None = None


def parse_json(body: bytes) -> dict:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(f"the request body is not valid JSON ({_first_line(exc)})") from None
    if not isinstance(data, dict):
        raise RequestError("the request body must be a JSON object")
    return data


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _part_type(part) -> str | None:
    return part.get("type") if isinstance(part, dict) and isinstance(part.get("type"), str) else None


def _image_url(part: dict) -> str | None:
    """The URL of an image_url part (``{"url": ...}``, or a bare string as some clients send)."""
    value = part.get("image_url")
    if isinstance(value, dict):
        value = value.get("url")
    return value if isinstance(value, str) else None


def parse_query(value) -> Query:
    if isinstance(value, str):
        return Query(text=value)
    if not isinstance(value, dict) or not isinstance(value.get("content"), list):
        raise RequestError('the query must be a string or {"content": [parts]}', param="query")
    texts, images = [], []
    for part in value["content"]:
        kind = _part_type(part)
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url" and _image_url(part) is not None:
            images.append(_image_url(part))
        else:
            raise RequestError(f"the query has a part of type {kind!r}; it may hold text and image_url parts",
                               param="query")
    if len(images) > 1:
        raise RequestError(f"the query holds {len(images)} images; it may hold at most one", param="query")
    return Query(" ".join(t.strip() for t in texts if t.strip()), images[0] if images else None)


def parse_document(index: int, value) -> Document:
    """One document; what cannot be scored is a Document with an error, never an exception."""
    if isinstance(value, str):
        echo = {"text": value}
        if is_reference(value):
            return Document(index, echo, url=value)
        return Document(index, echo, error="this document is text, and this reranker ranks images; send an image URL")
    if not isinstance(value, dict):
        return Document(index, {"text": None}, error=f"a document is a string or an object, not {type(value).__name__}")
    if "content" in value:
        parts = value["content"]
        echo = {"text": None, "multi_modal": parts}
        if not isinstance(parts, list):
            return Document(index, echo, error='"content" must be a list of parts')
        kinds = [_part_type(part) for part in parts]
        unusable = [k for k in kinds if k != "image_url"]
        if unusable:
            what = "text parts" if unusable[0] == "text" else f"a part of type {unusable[0]!r}"
            return Document(index, echo, error=f"this document has {what}, and this reranker scores one image per document")
        urls = [_image_url(part) for part in parts]
        if len(urls) != 1:
            return Document(index, echo, error=f"this document holds {len(urls)} images; a document is exactly one image")
        if urls[0] is None:
            return Document(index, echo, error='the image_url part has no "url" string')
        return Document(index, echo, url=urls[0])
    if "image" in value:
        image = value["image"]
        echo = {"image": image}
        if not isinstance(image, str):
            return Document(index, echo, error='"image" must be a URL, a path or base64 text')
        return Document(index, echo, url=bare_base64(image) or image)
    if "text" in value:
        return Document(index, {"text": value.get("text")},
                        error="this document is text, and this reranker ranks images; send an image URL")
    return Document(index, {"text": None}, error='a document object needs "content" (vLLM) or "image" (Jina)')


def parse_documents(value, max_documents: int, param: str = "documents") -> list[Document]:
    if value is None:
        raise RequestError(f'"{param}" is missing: give the images to rank', param=param)
    items = value if isinstance(value, list) else [value]
    if not items:
        raise RequestError(f'"{param}" is empty: give at least one image to rank', param=param)
    if len(items) > max_documents:
        raise RequestError(
            f"{len(items):,} documents in one request; this service takes at most {max_documents:,}", param=param
        )
    return [parse_document(i, item) for i, item in enumerate(items)]


def _whole(data: dict, key: str, default: int) -> int:
    value = data.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RequestError(f'"{key}" must be a whole number, 0 or more (0: every document)', param=key)
    return value


def _optional_text(data: dict, key: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise RequestError(f'"{key}" must be a string', param=key)
    return value


def parse_rerank(data: dict, max_documents: int) -> RerankCall:
    if "query" not in data or data["query"] is None:
        raise RequestError('"query" is missing: give the text (or image) to rank the documents against', param="query")
    return_documents = data.get("return_documents", True)
    if not isinstance(return_documents, bool):
        raise RequestError('"return_documents" must be true or false', param="return_documents")
    return RerankCall(
        query=parse_query(data["query"]),
        documents=parse_documents(data.get("documents"), max_documents),
        model=_optional_text(data, "model"),
        top_n=_whole(data, "top_n", 0),
        return_documents=return_documents,
        instruction=_optional_text(data, "instruction"),
    )


# vLLM's /score names the two sides in several ways; the first side must be one query here.
_SCORE_PAIRS = (("queries", "documents"), ("queries", "items"), ("data_1", "data_2"), ("text_1", "text_2"))


def parse_score(data: dict, max_documents: int) -> RerankCall:
    for first, second in _SCORE_PAIRS:
        if first in data:
            break
    else:
        raise RequestError('"queries" (or "text_1", "data_1") is missing: give the query', param="queries")
    query = data[first]
    if isinstance(query, list):
        if len(query) != 1:
            raise RequestError(f'"{first}" holds {len(query)} queries; this service scores one query at a time',
                               param=first)
        query = query[0]
    return RerankCall(
        query=parse_query(query),
        documents=parse_documents(data.get(second), max_documents, second),
        model=_optional_text(data, "model"),
        instruction=_optional_text(data, "instruction"),
    )


@dataclass
class Outcome:
    """What became of one document: its score and input length, or its error."""

    index: int
    score: float | None = None
    tokens: int = 0
    error: str | None = None


def rerank_response(call: RerankCall, outcomes: list[Outcome], model: str) -> dict:
    """vLLM's RerankResponse: results best first (ties by index), top_n of them; plus ``errors``
    (ours) when some documents could not be scored."""
    scored = sorted((o for o in outcomes if o.score is not None), key=lambda o: (-o.score, o.index))
    tokens = sum(o.tokens for o in scored)
    if call.top_n and call.top_n < len(scored):
        scored = scored[: call.top_n]
    results = []
    for outcome in scored:
        result = {"index": outcome.index, "relevance_score": outcome.score}
        if call.return_documents:
            result["document"] = call.documents[outcome.index].echo
        results.append(result)
    body = {
        "id": f"rerank-{uuid.uuid4().hex}",
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        "results": results,
    }
    return _with_errors(body, outcomes)


def score_response(outcomes: list[Outcome], model: str) -> dict:
    """vLLM's ScoreResponse: one entry per document in input order."""
    scored = [o for o in outcomes if o.score is not None]
    tokens = sum(o.tokens for o in scored)
    body = {
        "id": f"score-{uuid.uuid4().hex}",
        "object": "list",
        "created": int(time.time()),
        "model": model,
        "data": [{"index": o.index, "object": "score", "score": o.score} for o in scored],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0},
    }
    return _with_errors(body, outcomes)


def _with_errors(body: dict, outcomes: list[Outcome]) -> dict:
    errors = [{"index": o.index, "message": o.error} for o in outcomes if o.error is not None]
    if errors:
        body["errors"] = errors
    return body
