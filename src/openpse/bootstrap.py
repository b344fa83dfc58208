"""The composition root: builds the database, crypto, connectors, pipeline and app from Settings."""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Any

from openpse.config import Settings
from openpse.crypto import Fingerprinter, SecretBox
from openpse.logs import configure_logging
from openpse.services.context import Services
from openpse.storage import migrate
from openpse.storage.db import Database
from openpse.storage.request_log import RequestLogWriter

__all__ = ["Runtime", "build_app", "build_services", "ensure_schema"]



@dataclass
class Runtime:
    services: Services
    asgi: Any
    fastapi: Any
    redis: Any | None


def build_services(settings: Settings) -> Services:
    master = settings.master_key_bytes()
    db = Database(settings.resolved_database_url(), key_cache=settings.key_cache)
    svc = Services(
        db=db,
        settings=settings,
        secrets=SecretBox({1: master}),
        fingerprints=Fingerprinter(master),
    )
    _attach_connectors(svc)
    _register_hooks()
    return svc


def _register_hooks() -> None:
    """Import the modules whose hooks and event sinks must be registered in every process."""
    import openpse.services.checkout
    import openpse.services.webhook_endpoints  # noqa: F401  (the webhook outbox event sink)


def _attach_connectors(svc: Services) -> None:
    try:
        from openpse.connectors.registry import default_connectors
    except ImportError:  # payments core not installed in this build
        return
    svc.connectors.update(default_connectors(svc))


def ensure_schema(settings: Settings, *, create: bool) -> None:
    """Embedded SQLite: create/upgrade the schema itself. Elsewhere: refuse a schema behind."""
    url = settings.resolved_database_url()
    if create and url.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    migrate.ensure_schema(url, create=create)


def build_app(settings: Settings, *, services: Services | None = None) -> Runtime:
    # The API is imported here, not at the top: the CLI commands that need only the services
    # (merchants, keys, ledger) then start without importing FastAPI and the pipeline.
    from openpse.api.app import create_app
    from openpse.api.auth import Authenticator
    from openpse.api.idempotency import IdempotencyStore
    from openpse.api.nonces import DatabaseNonceStore, NonceStore, RedisNonceStore
    from openpse.api.pipeline import PipelineConfig
    from openpse.api.ratelimit import make_rate_limiter

    configure_logging(settings.log_level, settings.log_file)
    svc = services or build_services(settings)
    redis_client = None
    nonces: NonceStore
    if settings.redis_url:
        import redis.asyncio as aioredis

        redis_client = aioredis.from_url(settings.redis_url)
        nonces = RedisNonceStore(redis_client)
    else:
        nonces = DatabaseNonceStore(svc.db)
    pipeline = PipelineConfig(
        authenticator=Authenticator(
            svc.db, svc.secrets, nonces, window_s=settings.timestamp_window_s,
        ),
        rate_limiter=make_rate_limiter(redis_client),
        idempotency=IdempotencyStore(
            svc.db, svc.secrets, lock_timeout_s=settings.idempotency_lock_timeout_s
        ),
        request_log=RequestLogWriter(svc.db),
        max_body_bytes=settings.max_body_bytes,
        default_rate_per_s=settings.rate_limit,
        trusted_proxies=settings.trusted_proxy_networks(),
    )
    extra_routers, startup, shutdown = _features(svc)
    asgi, fastapi_app = create_app(
        svc, pipeline, extra_routers=extra_routers, on_startup=startup, on_shutdown=shutdown
    )
    return Runtime(services=svc, asgi=asgi, fastapi=fastapi_app, redis=redis_client)


def _features(svc: Services) -> tuple[list[Any], list[Any], list[Any]]:
    """Routers and background tasks of the capabilities present in this build."""
    import os

    from openpse.worker import build_worker

    routers: list[Any] = []
    startup: list[Any] = []
    shutdown: list[Any] = []
    try:
        from openpse.api.routes import registry
    except ImportError:
        pass
    else:
        routers.extend(registry.ROUTERS)
    if os.environ.get("OPENPSE_RUN_WORKER") == "1":
        worker = build_worker(svc)
        tasks: list[Any] = []

        async def _start() -> None:
            import asyncio

            tasks.append(asyncio.get_running_loop().create_task(worker.run()))

        async def _stop() -> None:
            worker.stop()
            for t in tasks:
                await t

        startup.append(_start)
        shutdown.append(_stop)
    from openpse import process_metrics

    publish_start, publish_stop = process_metrics.start_publishing()
    startup.append(publish_start)
    shutdown.append(publish_stop)
    shutdown.append(svc.db.dispose)
    return routers, startup, shutdown


# The youngest generation's threshold for processes that own their interpreter (CPython's
# default is 700). Almost every object of a request dies by reference counting, but with
# dozens of requests in flight their live objects pass 700 again and again: `serve` under a
# closed loop of 32 clients ran 891 young collections (81 older, 7 full) in ~10 s, 4.2 % of
# its CPU (PostgreSQL, 2026-12-08, timed with gc.callbacks); with 2,000, 37 collections and
# 0.45 %; with 7,000 or more none after warm-up. At most this many container objects of
# cyclic garbage wait for a collection: a few MB.
YOUNG_GENERATION_THRESHOLD = 10_000


def settle_heap() -> None:
    """For a process that owns its interpreter (``serve``, ``worker``), once it is built:
    collect, then freeze what is left (modules, the app, its models and tables) out of the
    cyclic collector's sight. Its full collections otherwise walk those hundreds of thousands
    of long-lived objects again and again: measured in-process on 2026-12-07, 0.08-0.11 ms of
    collector time per create+confirm, 0.02 ms frozen. Then the youngest generation's
    threshold is raised (``YOUNG_GENERATION_THRESHOLD``): the concurrent requests' live objects
    kept crossing the default. Not for tests and embedders, which build apps and drop them
    (frozen objects are never collected)."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_GENERATION_THRESHOLD, older, oldest)


async def run_worker(settings: Settings) -> None:
    """``openpse worker``: background jobs only, until SIGINT/SIGTERM."""
    import asyncio
    import signal

    from openpse import process_metrics
    from openpse.worker import build_worker

    process_metrics.mark_exit_at_end()
    configure_logging(settings.log_level, settings.log_file)
    svc = build_services(settings)
    w = build_worker(svc)
    settle_heap()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, w.stop)
    start_publishing, stop_publishing = process_metrics.start_publishing()
    await start_publishing()
    try:
        await w.run()
    finally:
        await stop_publishing()
        await svc.db.dispose()
