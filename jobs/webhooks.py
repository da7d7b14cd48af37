"""Webhooks: which jobs notify whom, the signed payloads, and every delivery attempt, kept in Redis.

`announce` is the one call made where a job changes state (API: queued, cancelled; training worker:
started, range_test_done, progress, succeeded, failed, cancelled). It only writes a delivery record
and returns its id; the caller sends `clr.deliver_webhook(id)` to the "webhooks" queue, whose own
workers (`worker/webhook_tasks.py`) do the HTTP. A receiver that is down therefore never blocks or
fails a job, and a failure to announce is logged, never raised into the job.

Payloads follow the Standard Webhooks layout: `{"type": "job.<event>", "timestamp": ..., "data":
<the job's status object, as GET /v1/jobs/{id} returns it>}`; `range_test_done` adds
`recommendation` (the sweep's suggested learning rates). Headers `webhook-id` (the delivery id, the
same on every retry, so receivers can drop duplicates), `webhook-timestamp` and `webhook-signature`
(`v1,<base64 HMAC-SHA256>` per secret of the key, space separated while a secret is rotated).

Key layout (under the store's prefix):

    {p}:webhook:{delivery_id}           hash: job, owner, event, url, body, state, attempts, window start
    {p}:webhook:{delivery_id}:attempts  list: one JSON object per attempt (status code, latency, error)
    {p}:job:{id}:webhooks               list: the job's delivery ids, oldest first
    {p}:webhook-progress:{id}           string with a TTL: the progress throttle
"""

from __future__ import annotations

import json
import logging
import random
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import redis
from pydantic import TypeAdapter
from standardwebhooks.webhooks import Webhook

from clrcore.specs import NotifySpec
from jobs.job_status import base_links, job_status
from jobs.redis_errors import unavailable_on_redis_errors
from jobs.settings import Settings

log = logging.getLogger(__name__)

_JSON = TypeAdapter(Any)


def webhook_secrets(setting: str) -> dict[str, list[str]]:
    """Parse `Settings.webhook_secrets` (`name:whsec_...` pairs) into each key's secrets, in order."""
    found: dict[str, list[str]] = {}
    for entry in filter(None, (e.strip() for e in setting.split(","))):
        name, sep, secret = entry.partition(":")
        if not sep or not name.strip() or not secret.strip():
            raise ValueError("webhook_secrets entries must look like name:whsec_<base64>")
        Webhook(secret.strip())  # a secret that is not valid base64 is a start-up error
        found.setdefault(name.strip(), []).append(secret.strip())
    return found


def sign(secrets_of_key: list[str], delivery_id: str, at: datetime, body: str) -> str:
    """The `webhook-signature` header: one `v1,<sig>` per secret, space separated."""
    return " ".join(Webhook(secret).sign(delivery_id, at, body) for secret in secrets_of_key)


def retry_delay(attempt: int, base: float) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based): base * 2**(attempt-1), with
    +-50% jitter so receivers coming back are not hit by every sender at once."""
    return base * 2 ** (attempt - 1) * random.uniform(0.5, 1.5)


class WebhookDeliveries:
    """Delivery records on the store's Redis client, and the `announce` that creates them."""

    def __init__(self, client: redis.Redis, prefix: str, settings: Settings) -> None:
        self.redis, self.prefix, self.settings = client, prefix, settings

    def _key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def notify_of(self, record: dict) -> dict | None:
        """The job's `notify` object, or its key's default, or None."""
        notify = (record.get("spec") or {}).get("notify")  # as sent: unset events mean the defaults
        if notify:
            return NotifySpec.model_validate(notify).model_dump(mode="json")
        return self.settings.webhook_defaults.get(record["owner"])

    @unavailable_on_redis_errors
    def announce(self, record: dict, event: str, recommendation: dict | None = None) -> str | None:
        """Record a delivery of `event` for this job if its notify object asks for it; its id, or None.

        `progress` is throttled to one per `webhook_progress_interval` per job."""
        notify = self.notify_of(record)
        if notify is None or event not in notify["events"]:
            return None
        if event == "progress" and not self.redis.set(
            self._key("webhook-progress", record["id"]), "1", nx=True,
            px=int(self.settings.webhook_progress_interval * 1000),
        ):
            return None
        payload: dict[str, Any] = {
            "type": f"job.{event}",
            "timestamp": datetime.now(UTC),
            "data": job_status(record, base_links(record["id"])),
        }
        if recommendation is not None:
            payload["recommendation"] = recommendation
        body = json.dumps(_JSON.dump_python(payload, mode="json"), separators=(",", ":"))
        delivery_id = "msg_" + secrets.token_hex(12)
        ttl = self.settings.webhook_record_ttl
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self._key("webhook", delivery_id), mapping={
            "id": delivery_id, "job_id": record["id"], "owner": record["owner"], "event": event,
            "url": notify["url"], "body": body, "state": "pending", "attempts": 0,
            "created_at": repr(time.time()), "window_start": repr(time.time()),
        })
        pipe.expire(self._key("webhook", delivery_id), ttl)
        pipe.rpush(self._key("job", record["id"], "webhooks"), delivery_id)
        pipe.expire(self._key("job", record["id"], "webhooks"), ttl)
        pipe.execute()
        return delivery_id

    @unavailable_on_redis_errors
    def get(self, delivery_id: str) -> dict | None:
        """The delivery record (without its attempts), or None."""
        raw = self.redis.hgetall(self._key("webhook", delivery_id))
        if not raw:
            return None
        return {**raw, "attempts": int(raw["attempts"]), "created_at": float(raw["created_at"]),
                "window_start": float(raw["window_start"])}

    @unavailable_on_redis_errors
    def attempts(self, delivery_id: str) -> list[dict]:
        return [json.loads(a) for a in self.redis.lrange(self._key("webhook", delivery_id, "attempts"), 0, -1)]

    @unavailable_on_redis_errors
    def for_job(self, job_id: str) -> list[dict]:
        """Every delivery of the job, oldest first, each with its attempts (records past their TTL left out)."""
        out = []
        for delivery_id in self.redis.lrange(self._key("job", job_id, "webhooks"), 0, -1):
            record = self.get(delivery_id)
            if record is not None:
                record.pop("body", None)
                record.pop("owner", None)
                out.append({**record, "attempt_log": self.attempts(delivery_id)})
        return out

    @unavailable_on_redis_errors
    def record_attempt(self, delivery_id: str, attempt: dict, state: str) -> int:
        """Append one attempt and set the delivery's state; returns the attempt count."""
        ttl = self.settings.webhook_record_ttl
        pipe = self.redis.pipeline(transaction=True)
        pipe.rpush(self._key("webhook", delivery_id, "attempts"), json.dumps(attempt))
        pipe.expire(self._key("webhook", delivery_id, "attempts"), ttl)
        pipe.hincrby(self._key("webhook", delivery_id), "attempts", 1)
        pipe.hset(self._key("webhook", delivery_id), "state", state)
        return int(pipe.execute()[2])

    @unavailable_on_redis_errors
    def restart(self, delivery_id: str) -> None:
        """A redelivery by hand: pending again, with a fresh retry window (the attempts stay listed)."""
        self.redis.hset(self._key("webhook", delivery_id), mapping={"state": "pending",
                                                                    "window_start": repr(time.time())})


def announce_quietly(deliveries: WebhookDeliveries, job_id: str, event: str, send: Callable[[str], None],
                     *, record: dict | None = None, get_record: Callable[[str], dict | None] | None = None,
                     recommendation: dict | None = None) -> str | None:
    """`announce` then `send(delivery_id)`, never raising: a webhook must not fail or delay a job."""
    try:
        if record is None and get_record is not None:
            record = get_record(job_id)
        if record is None:
            return None
        delivery_id = deliveries.announce(record, event, recommendation)
        if delivery_id is not None:
            send(delivery_id)
        return delivery_id
    except Exception as exc:  # a broker or Redis blip loses this notice, never the job
        log.warning("job %s: webhook %s not announced: %s", job_id, event, exc)
        return None
