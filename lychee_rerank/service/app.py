"""The ASGI app: ``/v1/rerank`` (and ``/rerank``, ``/v2/rerank``), ``/score`` (and ``/v1/score``),
``/v1/models``, ``/health`` and ``/metrics``, over one loaded ``Reranker``.

Each request becomes one ``RunSettings`` -- the served settings (``template``: model, resolution,
preprocessing, mode, token budget, fixed by the operator) with the request's query, query image and
instruction -- built and checked exactly as the CLI and the app build theirs, and one ``Job`` for
the scheduler. No scoring happens here: the engine scores, this module only translates.

Starlette rather than FastAPI: it is already installed with Streamlit, and FastAPI's value here --
request models validated by pydantic -- does not fit a protocol whose bad documents are not bad
requests (each gets its own one-sentence error while the others are scored).
"""

from __future__ import annotations

import asyncio
import hmac
import threading
import time
from dataclasses import dataclass, field

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..checks import InputError
from ..images import ImageError
from ..jobs import Job
from ..settings import RunSettings
from .metrics import CONTENT_TYPE, Metrics
from .protocol import (
    Outcome,
    RequestError,
    error_body,
    parse_json,
    parse_rerank,
    parse_score,
    rerank_response,
    score_response,
)
from .scheduler import QueueFull, Scheduler
from .sources import MIB, SourceError, SourcePolicy, image_source

DISCONNECT_POLL_S = 0.2
OPEN_PATHS = frozenset({"/health", "/metrics"})  # readable without the API key, as vLLM leaves them
CLIENT_CLOSED = 499  # nginx's code for "the client closed the connection": counted, never seen


@dataclass(frozen=True)
class ServiceConfig:
    served_names: tuple[str, ...]
    api_key: str | None = None
    max_documents: int = 256
    max_waiting: int = 32  # requests waiting for a pass; more get 503 with Retry-After
    max_jobs_per_pass: int = 16
    max_body_bytes: int = 256 * MIB
    sources: SourcePolicy = field(default_factory=SourcePolicy)


def error_response(message: str, status: int, param: str | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, status, param), status_code=status, headers=headers)


class BearerAuth:
    """``Authorization: Bearer KEY`` on every path but /health and /metrics; compared in constant time."""

    def __init__(self, app, key: str):
        self.app = app
        self.key = key.encode("utf-8")

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            header = dict(scope.get("headers") or []).get(b"authorization", b"")
            scheme, _, token = header.partition(b" ")
            if not (scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key)):
                response = error_response("a valid API key is required: send Authorization: Bearer <key>", 401,
                                          headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class Service:
    def __init__(self, reranker, template: RunSettings, config: ServiceConfig):
        self.reranker = reranker
        self.template = template
        self.config = config
        self.scheduler = Scheduler(reranker, config.max_waiting, config.max_jobs_per_pass)
        self.metrics = Metrics(lambda: self.scheduler.depth, lambda: self.scheduler.running)
        self.client = None
        if config.sources.allow_remote:
            import httpx2

            self.client = httpx2.AsyncClient(follow_redirects=False)
        self.created = int(time.time())

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()
        await anyio.to_thread.run_sync(self.scheduler.close)

    # -- endpoints --------------------------------------------------------------------------------
    async def rerank(self, request: Request) -> Response:
        return await self._measured(request, "rerank", parse_rerank, rerank_response)

    async def score(self, request: Request) -> Response:
        return await self._measured(request, "score", parse_score, lambda _call, outcomes, model: score_response(outcomes, model))

    async def models(self, _request: Request) -> Response:
        data = [
            {"id": name, "object": "model", "created": self.created, "owned_by": "lychee-rerank",
             "root": self.reranker.info.name, "parent": None}
            for name in self.config.served_names
        ]
        return JSONResponse({"object": "list", "data": data})

    async def health(self, _request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": self.config.served_names[0]})

    async def prometheus(self, _request: Request) -> Response:
        return Response(self.metrics.exposition(), media_type=CONTENT_TYPE)

    # -- one request ------------------------------------------------------------------------------
    async def _measured(self, request, endpoint, parse, respond) -> Response:
        start = time.perf_counter()
        try:
            response = await self._answer(request, parse, respond)
        except RequestError as exc:
            response = error_response(exc.message, exc.status, exc.param)
        except QueueFull as exc:
            response = error_response(
                f"the service is busy ({self.config.max_waiting} requests waiting); try again in {exc.retry_after_s} s",
                503, headers={"Retry-After": str(exc.retry_after_s)},
            )
        self.metrics.requests.labels(endpoint, str(response.status_code)).inc()
        self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
        return response

    async def _answer(self, request: Request, parse, respond) -> Response:
        call = parse(parse_json(await _body(request, self.config.max_body_bytes)), self.config.max_documents)
        if call.model is not None and call.model not in self.config.served_names:
            raise RequestError(f"The model `{call.model}` does not exist.", 404, "model")  # vLLM's words
        if self.scheduler.full():  # before fetching anything
            raise QueueFull(self.scheduler.retry_after_s())
        settings = await self._settings(call)
        await asyncio.gather(*(self._fetch(document) for document in call.documents))
        usable = [d for d in call.documents if d.error is None]
        if not usable:
            first = call.documents[0]
            raise RequestError(f"document {first.index}: {first.error}", param="documents")
        stop = threading.Event()
        job = Job(settings, [d.data for d in usable], [f"document {d.index}" for d in usable], should_stop=stop)
        ranking = await self._wait(self.scheduler.submit(job), request, stop)
        if ranking is None:
            self.metrics.images.labels("dropped").inc(len(usable))
            return Response(status_code=CLIENT_CLOSED)
        if ranking.error:
            raise RequestError(f"the ranking stopped on an unexpected error ({ranking.error})", 500)
        outcomes = {d.index: Outcome(d.index, error=d.error) for d in call.documents}
        for document, result in zip(usable, ranking.results):
            if result.status == "scored":
                outcomes[document.index] = Outcome(document.index, result.score, result.tokens or 0)
            else:
                outcomes[document.index] = Outcome(document.index, error=result.error or "not scored")
        ordered = [outcomes[i] for i in range(len(call.documents))]
        scored = sum(o.score is not None for o in ordered)
        self.metrics.images.labels("scored").inc(scored)
        self.metrics.images.labels("error").inc(len(ordered) - scored)
        return JSONResponse(respond(call, ordered, self.config.served_names[0]))

    async def _settings(self, call) -> RunSettings:
        """The request's RunSettings: the served ones with its query, query image and instruction."""
        picture = None
        if call.query.image_url is not None:
            try:
                picture = await image_source(call.query.image_url, self.config.sources, self.client)
            except SourceError as exc:
                raise RequestError(f"the query image cannot be used: {exc}", param="query") from None

        def build() -> RunSettings:
            # A data-folder file is read here, through its confined open: settings hold the bytes.
            data = picture if picture is None or isinstance(picture, bytes) else picture.read_bytes()
            return self.template.replace(query=call.query.text, query_image=data, query_image_name="query image",
                                         instruction=call.instruction or self.template.instruction)

        try:
            return await anyio.to_thread.run_sync(build)
        except ImageError as exc:
            raise RequestError(f"the query image cannot be used: {exc}", param="query") from None
        except InputError as exc:
            raise RequestError(str(exc), param="query") from None

    async def _fetch(self, document) -> None:
        if document.error is not None:
            return
        try:
            document.data = await image_source(document.url, self.config.sources, self.client)
        except SourceError as exc:
            document.error = str(exc)

    async def _wait(self, future, request: Request, stop: threading.Event):
        """The job's Ranking; None when the client went away first (its work is then dropped)."""
        waiting = asyncio.wrap_future(future)
        while True:
            try:
                done, _ = await asyncio.wait({waiting}, timeout=DISCONNECT_POLL_S)
            except asyncio.CancelledError:  # a proxy (Ray Serve's) cancels a request whose client left
                stop.set()
                raise
            if done:
                try:
                    return waiting.result()
                except InputError as exc:  # what only the loaded tokenizer can tell (a control token, a query too long)
                    raise RequestError(str(exc), param="query") from None
            if await request.is_disconnected():
                stop.set()
                return None


async def _body(request: Request, limit: int) -> bytes:
    too_large = RequestError(f"the request body is larger than {limit / MIB:g} MB, the most this service takes", 413)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


async def _http_error(_request: Request, exc: HTTPException) -> Response:
    messages = {404: "no such endpoint; this service answers /v1/rerank, /rerank, /score, /v1/models, /health and /metrics",
                405: "this endpoint does not take that method"}
    return error_response(messages.get(exc.status_code, str(exc.detail)), exc.status_code)


async def _internal_error(_request: Request, exc: Exception) -> Response:
    return error_response(f"the service failed on an unexpected error ({type(exc).__name__})", 500)


def create_app(reranker, template: RunSettings, config: ServiceConfig) -> Starlette:
    """The service over a loaded reranker. ``template``: the served RunSettings (its query is a
    stand-in, replaced by each request's); it must be for the reranker's model."""
    service = Service(reranker, template, config)
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(_app):
        yield
        await service.close()

    routes = [
        Route(path, service.rerank, methods=["POST"]) for path in ("/v1/rerank", "/rerank", "/v2/rerank")
    ] + [Route(path, service.score, methods=["POST"]) for path in ("/score", "/v1/score")] + [
        Route("/v1/models", service.models, methods=["GET"]),
        Route("/health", service.health, methods=["GET"]),
        Route("/metrics", service.prometheus, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: _http_error, Exception: _internal_error})
    if config.api_key:
        app.add_middleware(BearerAuth, key=config.api_key)
    app.state.service = service
    return app
