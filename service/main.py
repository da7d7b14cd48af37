"""The API process: builds the FastAPI app from one Settings object.

Imports only torch-free modules (clrcore.specs/catalog/presets, the store, a by-name Celery client);
`tests/service/test_boundaries.py` checks that `torch` never lands in `sys.modules`.
"""

from __future__ import annotations

import logging
import re
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import quote

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobs.datasets import DatasetStore
from jobs.settings import Settings, get_settings
from jobs.storage import store_for
from jobs.store import JobStore
from jobs.webhooks import webhook_secrets
from jobs.weights import WeightStore
from jobs.workers import WorkerRegistry
from service import errors, object_files
from service.auth import KeyRing
from service.event_reader import EventReader
from service.http_protocol import header_timeout_protocol
from service.metrics import ServiceMetrics
from service.queue import JobQueue
from service.ratelimit import RateLimiter
from service.routes import artifacts, catalog, datasets, deliveries, health, jobs, suggest, ui, weights

logger = logging.getLogger(__name__)
access_log = logging.getLogger("service.access")

UNLIMITED_BODY = sys.maxsize
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

DESCRIPTION = """\
Submit LR range tests and cyclical-learning-rate training jobs, follow them, and fetch their plots
and reports. Authenticate with `Authorization: Bearer <secret>`; every job belongs to its key.
"""


class RequestContext:
    """Gives each request an id (`X-Request-ID`, reused when the client sent a sane one), logs one line
    per request with it, and counts requests. The Authorization header is never read or logged here."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), "")
        request_id = incoming if _SAFE_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        status_code = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.observe_request(scope["method"], route, status_code, elapsed)
            access_log.info("%s %s %d %.1fms request_id=%s", scope["method"], _raw_path(scope), status_code,
                            elapsed * 1000, request_id)


def _raw_path(scope: Scope) -> str:
    """The path as sent, still percent-encoded: a decoded %0a would start a forged log line."""
    raw = scope.get("raw_path")
    if raw:
        return raw.decode("latin-1").split("?", 1)[0].encode("unicode_escape").decode("ascii")
    return quote(scope["path"])


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app and its clients (nothing connects until the first request needs Redis)."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.uploads.sweep_incoming()  # temp files of uploads a crashed process never finished
        yield
        app.state.queue.close()
        await app.state.events.aclose()
        app.state.store.redis.close()

    app = FastAPI(
        title="CLR training service",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        max_body_size=settings.max_body_bytes,
    )
    queue = JobQueue(settings)
    store = JobStore.from_settings(settings, send_webhook=queue.send_webhook)  # transitions announce themselves
    app.state.settings = settings
    app.state.store = store
    app.state.workers = WorkerRegistry(store.redis, settings.key_prefix)
    app.state.uploads = DatasetStore(store.redis, settings.key_prefix, settings.data_dir, store_for(settings))
    app.state.weights = WeightStore(store.redis, settings.key_prefix, settings.data_dir, store_for(settings))
    app.state.queue = queue
    webhook_secrets(settings.webhook_secrets)  # a malformed secret is a start-up error, not a 500 per submit
    app.state.webhooks = store.webhooks
    app.state.keys = KeyRing.from_setting(settings.api_keys, open_mode=settings.open_mode)
    token = settings.metrics_token
    app.state.scrape_keys = KeyRing.from_setting(f"prometheus:{token}") if token else None
    app.state.rate_limiter = RateLimiter(store.redis, settings.key_prefix, settings.rate_limit_per_minute)
    app.state.metrics = ServiceMetrics(store)
    app.state.events = EventReader.from_settings(settings, store)  # SSE: awaited reads, no thread per stream
    app.state.open_streams = {}  # owner -> event streams open in this process (the per-key cap)

    errors.install(app)
    object_files.install(app)
    for module in (jobs, deliveries, artifacts, catalog, health, suggest):
        app.include_router(module.router)
    # Uploads are exempt from the JSON body limit: the route streams the body to disk and counts it
    # against CLR_MAX_UPLOAD_BYTES and the key's quota itself, refusing with a 413 that says which.
    app.include_router(datasets.router, max_body_size=UNLIMITED_BODY)
    app.include_router(weights.router, max_body_size=UNLIMITED_BODY)
    ui.mount(app)  # the dashboard at /ui, same origin

    origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
    if origins:
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["Authorization", "Content-Type", "Idempotency-Key",
                                          "Last-Event-ID"],
                           expose_headers=["Location", "X-Request-ID", "Retry-After"])
    app.add_middleware(RequestContext, metrics=app.state.metrics)
    return app


def main() -> None:
    """`python -m service.main`: serve with uvicorn and plain logging (our access line replaces uvicorn's),
    with the connection limits of the settings, so slow or idle clients cannot hold connections forever."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run("service.main:app", access_log=False, **server_options(get_settings()))


def server_options(settings: Settings) -> dict:
    """uvicorn's keyword arguments from the settings: h11 (its head-size cap applies) with a deadline for
    each request head (`service.http_protocol`), the connection limit and the keep-alive timeout."""
    return {
        "host": settings.http_host,
        "port": settings.http_port,
        "http": header_timeout_protocol(settings.http_header_timeout_seconds),
        "limit_concurrency": settings.http_limit_concurrency,
        "timeout_keep_alive": settings.http_keep_alive_seconds,
        "h11_max_incomplete_event_size": settings.http_max_header_bytes,
    }


app = create_app()

if __name__ == "__main__":
    main()
