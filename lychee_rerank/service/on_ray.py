"""``serve --ray ADDRESS``: the same service on Ray Serve, one replica per GPU of the cluster.

Each replica is a Ray actor holding one GPU (Ray sets its CUDA_VISIBLE_DEVICES, so the engine's
``auto`` choices -- quantisation, token budget -- see that GPU alone), loading the model once and
serving the very app ``serve`` builds (``create_app``: same handler, same queue, same per-request
RunSettings). Ray Serve's HTTP proxy spreads requests over the replicas. Ray is optional:
``pip install -r requirements-ray.txt``.
"""

from __future__ import annotations

import logging
import signal

from ..settings import RunSettings
from .app import ServiceConfig, create_app

APP_NAME = "lychee-rerank"
INSTALL_HINT = "pip install -r requirements-ray.txt"


class RayServeError(RuntimeError):
    """Ray Serve could not be started or reached; one sentence."""


def replica_plan(cluster_gpus: float, asked: int | None) -> tuple[int, int]:
    """(replicas, GPUs per replica): one per GPU of the cluster unless asked; on a cluster without
    GPUs, ``asked`` CPU replicas (default 1)."""
    gpus = int(cluster_gpus)
    if gpus == 0:
        return asked or 1, 0
    if asked is not None and asked > gpus:
        raise RayServeError(f"{asked} replicas asked, but the cluster has {gpus} GPU{'s' if gpus > 1 else ''}")
    return asked or gpus, 1


def _deployment(settings: RunSettings, config: ServiceConfig, replicas: int, gpus: int):
    from ray import serve

    @serve.ingress()  # the app is built in the replica, around the model it loads there
    class RerankReplica:
        def __init__(self, settings: RunSettings, config: ServiceConfig):
            from ..reranker import Reranker

            self._app = create_app(Reranker.load(settings.model), settings, config)

        def __serve_build_asgi_app__(self):
            return self._app

    return serve.deployment(
        RerankReplica,
        name=APP_NAME,
        num_replicas=replicas,
        ray_actor_options={"num_gpus": gpus, "num_cpus": 1},
        # Each replica's own bounded queue answers 503; Ray's proxy must not hold requests back first.
        max_ongoing_requests=config.max_waiting + config.max_jobs_per_pass,
    ).bind(settings, config)


def serve_on_ray(address: str, settings: RunSettings, config: ServiceConfig, host: str, port: int,
                 replicas: int | None, say) -> int:
    """Start the deployment, then wait for SIGINT or SIGTERM and shut it down. Exit status 0, or
    RayServeError (one sentence)."""
    try:
        import ray
        from ray import serve
    except ImportError:
        raise RayServeError(f"Ray Serve is not installed: {INSTALL_HINT}") from None
    # Blocked from the start (Ray's threads inherit the mask): a signal during start-up waits for
    # sigwait below instead of reaching Ray's own handler, which would abort the process.
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        count, gpus = _start(ray, serve, address, settings, config, host, port, replicas)
        where = f"{count} replica{'s' if count > 1 else ''}" + (f", {gpus} GPU each" if gpus else " on CPU")
        say(f"serving {config.served_names[0]} on http://{host}:{port} with Ray Serve ({where}); "
            "Ctrl-C or SIGTERM stops it")
        received = signal.sigwait(signals)
        say(f"stopping on {signal.Signals(received).name}")
        serve.shutdown()
        ray.shutdown()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    return 0


def _start(ray, serve, address, settings, config, host, port, replicas) -> tuple[int, int]:
    from ..scale_out.driver import ScaleOutError, connect

    try:
        connect(ray, address)
    except ScaleOutError as exc:
        raise RayServeError(str(exc)) from None
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # its start-up lines would drown ours
    try:
        count, gpus = replica_plan(ray.cluster_resources().get("GPU", 0), replicas)
        serve.start(http_options={"host": host, "port": port})
        serve.run(_deployment(settings, config, count, gpus), name=APP_NAME, route_prefix="/", blocking=False)
    except RayServeError:
        ray.shutdown()
        raise
    except Exception as exc:  # a replica that cannot load the model fails the deployment
        ray.shutdown()
        text = " ".join(str(exc).split())
        raise RayServeError(f"the Ray Serve deployment failed: {text[:300]}") from exc
    return count, gpus
