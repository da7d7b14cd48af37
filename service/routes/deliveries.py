"""A job's webhook deliveries: every attempt (status code, latency, error), and redelivery by hand.

Same access rule as the job routes: the job must be the caller's key's (404 otherwise).
"""

from __future__ import annotations

import logging
import re
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel, Field

from service.deps import OwnedJob, QueueDep, WebhooksDep

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["webhooks"])

DELIVERY_ID = re.compile(r"^msg_[0-9a-f]{24}$")
_NO_JOB: dict[int | str, dict[str, Any]] = {404: {"description": "no such job (or delivery) for this key"}}


class Attempt(BaseModel):
    attempt: int
    at: float = Field(description="Unix seconds when the attempt started")
    status_code: int | None = Field(None, description="the receiver's answer; None if none came")
    latency_ms: float | None
    error: str | None = Field(None, description="why no answer came, or why the address was refused")
    address: str | None = Field(None, description="the checked address connected to")


class Delivery(BaseModel):
    id: str = Field(description="also the `webhook-id` header, the same on every retry")
    job_id: str
    event: str
    url: str
    state: Literal["pending", "delivered", "failed"]
    attempts: int
    created_at: float
    attempt_log: list[Attempt]


class DeliveryPage(BaseModel):
    items: list[Delivery]


@router.get("/jobs/{job_id}/deliveries", response_model=DeliveryPage, responses=_NO_JOB)
def list_deliveries(job: OwnedJob, webhooks: WebhooksDep) -> dict:
    """The job's webhook deliveries, oldest first, each with every attempt made so far."""
    return {"items": webhooks.for_job(job["id"])}


@router.post("/jobs/{job_id}/deliveries/{delivery_id}/redeliver", status_code=202, response_model=Delivery,
             responses=_NO_JOB)
def redeliver(job: OwnedJob, delivery_id: str, webhooks: WebhooksDep, queue: QueueDep) -> dict:
    """Send a delivery again (same id and payload, fresh signature and retry window), whatever its state."""
    delivery = webhooks.get(delivery_id) if DELIVERY_ID.match(delivery_id) else None
    if delivery is None or delivery["job_id"] != job["id"]:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="delivery not found")
    webhooks.restart(delivery_id)
    queue.send_webhook(delivery_id)
    logger.info("job %s: webhook %s redelivered by hand", job["id"], delivery_id)
    found = next(d for d in webhooks.for_job(job["id"]) if d["id"] == delivery_id)
    return found
