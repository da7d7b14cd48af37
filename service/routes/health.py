"""Liveness, readiness and Prometheus metrics. Probes need no key and so show no worker host, pid or job
id; /metrics needs an API key, or its own bearer token when CLR_METRICS_TOKEN is set (open only in open
mode or with CLR_METRICS_OPEN)."""

from __future__ import annotations

import logging
import secrets
import time

from fastapi import APIRouter, Depends, Response, status
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from service.deps import MetricsDep, QueueDep, SettingsDep, StoreDep, WorkersDep, scraper

logger = logging.getLogger(__name__)

router = APIRouter(tags=["health"])

PROOF_WINDOW_S = 60.0  # a worker that took a task (or is running one) this recently consumes for sure
CANARY_WAIT_S = 3.0


def _not_ready(reason: str) -> JSONResponse:
    logger.warning("not ready: %s", reason)
    return JSONResponse({"detail": f"not ready: {reason}"}, status.HTTP_503_SERVICE_UNAVAILABLE)


@router.get("/healthz")
async def healthz() -> dict:
    """The process is alive and serving (nothing else is checked)."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "Redis unreachable or no worker taking work"}})
def readyz(store: StoreDep, workers: WorkersDep, queue: QueueDep, settings: SettingsDep) -> Response:
    """Ready when Redis answers and some worker demonstrably takes work.

    A live heartbeat is not enough (workers have been seen alive but no longer consuming after a Redis
    reconnect): a worker counts once it runs a job or took a task within the last minute; otherwise a
    `clr.ping` canary goes to its queue and must be answered within a few seconds.
    """
    if not store.ping():
        return _not_ready("redis unreachable")
    heartbeat_age = max(3 * settings.heartbeat_seconds, 5.0)
    live = {w["worker_id"]: w for w in workers.live_workers(heartbeat_age)}
    if not live:
        return _not_ready(f"no worker heartbeat in the last {heartbeat_age:g} s")
    proven = [w for w in workers.proven_workers(PROOF_WINDOW_S) if w["worker_id"] in live]
    if proven:
        return JSONResponse({"status": "ready", "workers": _summary(proven)})
    token = secrets.token_hex(8)
    for name in sorted({w["queue"] for w in live.values()}):
        queue.send_canary(token, name)
    deadline = time.monotonic() + CANARY_WAIT_S
    while time.monotonic() < deadline:
        if reply := workers.canary(token):
            answered = live.get(reply["worker_id"], reply)
            return JSONResponse({"status": "ready", "workers": _summary([answered])})
        time.sleep(0.05)
    return _not_ready(f"{len(live)} worker(s) alive but none took a canary task within {CANARY_WAIT_S:g} s")


def _summary(workers: list[dict]) -> list[dict]:
    """Only the queues: probes need no key, so no host, pid or any tenant's job id is shown."""
    return [{"queue": w["queue"]} for w in workers]


@router.get("/metrics", response_class=Response, dependencies=[Depends(scraper)],
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"},
                       401: {"description": "CLR_METRICS_TOKEN is set and the request did not carry it"}})
def metrics(service_metrics: MetricsDep) -> Response:
    """Jobs by state, queue depth per queue, job durations and request counts (Prometheus text)."""
    return Response(service_metrics.render(), media_type=CONTENT_TYPE_LATEST)
