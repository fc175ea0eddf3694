"""``python -m lychee_rerank serve``: the rerank service (``lychee_rerank.service``) on uvicorn.

Everything that can be checked before the model loads is: the settings, the address (is the port
free?), the data folder. The model is loaded once; every request then builds its own RunSettings
from the served ones.
"""

from __future__ import annotations

import argparse
import os
import socket
from pathlib import Path

from .common import UsageError, add_settings_arguments, load_reranker, positive_int, say, settings_from_args

API_KEY_ENV = "LYCHEE_API_KEY"
DATA_DIR_ENV = "LYCHEE_DATA_DIR"
# The served settings are checked once at start with this query; each request brings its own.
STAND_IN_QUERY = "query"


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    add_settings_arguments(parser, query=False)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", help=f"require Authorization: Bearer KEY (default: ${API_KEY_ENV}; none: open)")
    parser.add_argument("--served-model-name", action="append", metavar="NAME",
                        help="the name(s) requests may give as \"model\" (default: the --model value)")
    parser.add_argument("--max-documents", type=positive_int, default=256, metavar="N", help="documents per request")
    parser.add_argument("--max-queue", type=positive_int, default=32, metavar="N",
                        help="requests waiting for the model; more are answered 503 with Retry-After")
    parser.add_argument("--max-image-mb", type=positive_int, default=20, metavar="MB", help="bytes per image")
    parser.add_argument("--allow-remote", action="store_true",
                        help="fetch http(s) image URLs (off: only data: URIs and files in $LYCHEE_DATA_DIR)")
    parser.add_argument("--remote-timeout", type=float, default=10.0, metavar="S", help="seconds per remote image")
    parser.add_argument("--token-budget", type=positive_int, metavar="N",
                        help="tokens per forward (default: from the free GPU memory; one image on CPU)")
    group = parser.add_argument_group("on Ray Serve (docs/service.md; needs requirements-ray.txt)")
    group.add_argument("--ray", metavar="ADDRESS",
                       help="serve on Ray Serve: 'local' (start Ray here), 'auto' or ray://HOST:10001")
    group.add_argument("--replicas", type=positive_int, metavar="N",
                       help="model replicas (default: one per GPU in the cluster; 1 on CPU)")


def _data_dir() -> Path | None:
    value = os.environ.get(DATA_DIR_ENV, "").strip()
    if not value:
        return None
    folder = Path(value).expanduser().resolve()
    if not folder.is_dir():
        raise UsageError(f"{DATA_DIR_ENV}={value} is not a folder")
    return folder


def _check_address(host: str, port: int) -> None:
    """Refuse an address that cannot be listened on before loading gigabytes of weights."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None


def run_serve(args: argparse.Namespace) -> int:
    from ..service import ServiceConfig, SourcePolicy, create_app
    from ..service.sources import MIB

    settings = settings_from_args(args, query=STAND_IN_QUERY, token_budget=args.token_budget)
    if not 0 < args.remote_timeout <= 600:
        raise UsageError("--remote-timeout must be between 0 and 600 seconds")
    policy = SourcePolicy(_data_dir(), args.allow_remote, args.max_image_mb * MIB, args.remote_timeout)
    _check_address(args.host, args.port)
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    names = tuple(args.served_model_name or [settings.model.name])
    config = ServiceConfig(names, api_key, args.max_documents, args.max_queue, sources=policy)
    if api_key is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        say(f"listening on {args.host} without an API key: whoever reaches it can use the model (--api-key)")
    if args.ray:
        return _serve_on_ray(args, settings, config)
    if args.replicas:
        raise UsageError("--replicas needs --ray ADDRESS (local, auto or ray://HOST:10001)")

    reranker = load_reranker(settings.model)
    if reranker is None:
        return 1
    app = create_app(reranker, settings, config)
    say(f"serving {names[0]} on http://{args.host}:{args.port} (POST /v1/rerank, /score; GET /v1/models, /health, /metrics)")

    import uvicorn

    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=10)
    return 0


def _serve_on_ray(args: argparse.Namespace, settings, config) -> int:
    from ..service.on_ray import RayServeError, serve_on_ray

    try:
        return serve_on_ray(args.ray, settings, config, args.host, args.port, args.replicas, say)
    except RayServeError as exc:
        say(str(exc))
        return 1
