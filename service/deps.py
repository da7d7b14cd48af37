"""Dependencies as named aliases, so a route's signature reads like a sentence.

Everything is built once in `create_app` and kept on `app.state`; these only look it up.
"""

from __future__ import annotations

import logging
import re
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from jobs.settings import Settings
from jobs.store import JobStore
from jobs.webhooks import WebhookDeliveries
from jobs.workers import WorkerRegistry
from service.auth import OPEN_MODE_OWNER, KeyRing
from service.metrics import ServiceMetrics
from service.queue import JobQueue
from service.ratelimit import RateLimiter

logger = logging.getLogger(__name__)

JOB_ID = re.compile(r"^job_[0-9a-f]{16}$")

_bearer = HTTPBearer(auto_error=False, description="an API key from CLR_API_KEYS (send the secret part)")


# Plain lookups are `async def` so FastAPI calls them inline instead of hopping to the threadpool;
# dependencies that wait on Redis stay `def` and run in the threadpool.
async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_store(request: Request) -> JobStore:
    return request.app.state.store


async def get_workers(request: Request) -> WorkerRegistry:
    return request.app.state.workers


async def get_queue(request: Request) -> JobQueue:
    return request.app.state.queue


async def get_webhooks(request: Request) -> WebhookDeliveries:
    return request.app.state.webhooks


async def get_metrics(request: Request) -> ServiceMetrics:
    return request.app.state.metrics


Credentials = Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]


def current_owner(request: Request, credentials: Credentials) -> str:
    """The name of the calling key (or 'local' in open mode), after counting the request against its limit.

    A missing or unknown key is 401 with `WWW-Authenticate: Bearer`; which of the two is not said.
    """
    keys: KeyRing = request.app.state.keys
    owner: str | None
    if keys.open_mode:
        owner = OPEN_MODE_OWNER
    else:
        owner = keys.owner_of(credentials.credentials) if credentials else None
        if owner is None:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, detail="missing or invalid API key",
                                headers={"WWW-Authenticate": "Bearer"})
    limiter: RateLimiter = request.app.state.rate_limiter
    limiter.check(owner)
    request.state.owner = owner
    return owner


async def scraper(request: Request, credentials: Credentials) -> None:
    """With CLR_METRICS_TOKEN set, /metrics answers only that bearer token (401 otherwise), compared in
    constant time like an API key; without it, any API key (the figures count every tenant's jobs), or no
    key at all in open mode or with CLR_METRICS_OPEN."""
    keys: KeyRing | None = request.app.state.scrape_keys
    if keys is None:
        settings = request.app.state.settings
        if settings.open_mode or settings.metrics_open:
            return
        keys = request.app.state.keys
    if credentials is None or keys.owner_of(credentials.credentials) is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, detail="missing or invalid metrics token or API key",
                            headers={"WWW-Authenticate": "Bearer"})


def owned_job(job_id: str, request: Request, credentials: Credentials) -> dict:
    """The job record if it exists and belongs to the caller; 404 otherwise (another key's job included,
    so ids cannot be probed). Ids that cannot exist are refused without asking Redis.

    Authenticates itself rather than depending on `current_owner`, so a job request costs one
    threadpool hop, not two.
    """
    owner = current_owner(request, credentials)
    if not JOB_ID.match(job_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="job not found")
    record = request.app.state.store.records.get(job_id)
    if record is None or record["owner"] != owner:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="job not found")
    return record


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[JobStore, Depends(get_store)]
WorkersDep = Annotated[WorkerRegistry, Depends(get_workers)]
QueueDep = Annotated[JobQueue, Depends(get_queue)]
WebhooksDep = Annotated[WebhookDeliveries, Depends(get_webhooks)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]
Owner = Annotated[str, Depends(current_owner)]
OwnedJob = Annotated[dict, Depends(owned_job)]
