"""Webhooks: which jobs notify whom, the signed payloads, and every delivery attempt, kept in Redis.

`JobNotices` is handed to the store (`JobStore.from_settings(settings, send_webhook=...)`) and called by
`jobs.records` itself after every transition, whoever makes it (API: cancelled, failed when it could not
queue; training worker: started, succeeded, failed, cancelled, queued at a shutdown hand-back; lease
keeper: failed at the deadline; sweeper: queued again or cancelled after a lease lapsed), and after a
delete (API or retention). Besides, `queued` (once sent), `range_test_done` and `progress`. Each notice
only writes a delivery record (`WebhookDeliveries.announce`) and sends `clr.deliver_webhook(id)` by name
to the "webhooks" queue, whose own workers (`worker/webhook_tasks.py`) do the HTTP. A receiver that is
down therefore never blocks or fails a job, and a failure to announce is logged, never raised.

Payloads follow the Standard Webhooks layout: `{"type": "job.<event>", "timestamp": ..., "data":
<the job's status object, as GET /v1/jobs/{id} returns it>}`, plus `sequence` (the job's notice
counter: it grows with each state change and each progress notice, counted in the same atomic step as
the change, so receivers order deliveries that arrive out of order), `previous` (the state before, on a
transition) and `reason` (why, when the job went back to the queue or a sweeper ended it);
`range_test_done` adds `recommendation` (the sweep's suggested learning rates). Headers `webhook-id`
(the delivery id, the same on every retry, so receivers can drop duplicates), `webhook-timestamp` and
`webhook-signature` (`v1,<base64 HMAC-SHA256>` per secret of the key, space separated while a secret is
rotated).

Key layout (under the store's prefix):

    {p}:webhook:{delivery_id}           hash: job, owner, event, url, body, state, attempts, window start
    {p}:webhook:{delivery_id}:attempts  list: one JSON object per attempt (status code, latency, error)
    {p}:job:{id}:webhooks               list: the job's delivery ids, oldest first
    {p}:webhook-progress:{id}           string with a TTL: the progress throttle
    {p}:webhooks:due                    sorted set: pending delivery ids by when their next attempt is due;
                                        an id left there past `webhook_resend_after` is sent again
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
from jobs import scripts
from jobs.job_status import base_links, job_status
from jobs.keys import JobKeys
from jobs.records import JobRecords
from jobs.redis_errors import unavailable_on_redis_errors
from jobs.settings import Settings

log = logging.getLogger(__name__)

_JSON = TypeAdapter(Any)

# The webhook event of each state a transition reaches; `cancelling` is no event (the job still runs).
EVENT_OF_STATE = {"queued": "queued", "running": "started", "succeeded": "succeeded", "failed": "failed",
                  "cancelled": "cancelled"}


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
        self._job_keys = JobKeys(prefix)
        self._next_notice = client.register_script(scripts.NEXT_NOTICE_LUA)
        self._restamp_due = client.register_script(scripts.RESTAMP_DUE_LUA)

    def _key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def notify_of(self, record: dict) -> dict | None:
        """The job's `notify` object, or its key's default, or None."""
        notify = (record.get("spec") or {}).get("notify")  # as sent: unset events mean the defaults
        if notify:
            return NotifySpec.model_validate(notify).model_dump(mode="json")
        return self.settings.webhook_defaults.get(record["owner"])

    @unavailable_on_redis_errors
    def wants(self, record: dict, event: str) -> bool:
        """Whether the job's notify object asks for `event`; `progress` at most once per
        `webhook_progress_interval` per job (asking takes the turn)."""
        notify = self.notify_of(record)
        if notify is None or event not in notify["events"]:
            return False
        return event != "progress" or bool(self.redis.set(
            self._key("webhook-progress", record["id"]), "1", nx=True,
            px=int(self.settings.webhook_progress_interval * 1000),
        ))

    @unavailable_on_redis_errors
    def next_notice(self, job_id: str) -> dict | None:
        """The job's record with its next `notice_seq` taken, in one step (None once it is deleted)."""
        flat = self._next_notice(keys=[self._job_keys.job(job_id)])
        return JobRecords.decode(dict(zip(flat[::2], flat[1::2], strict=True))) if flat else None

    @unavailable_on_redis_errors
    def announce(self, record: dict, event: str, recommendation: dict | None = None, *,
                 previous: str | None = None, reason: str | None = None) -> str | None:
        """Record a delivery of `event` for this job (`record`: its snapshot) if its notify object asks
        for it (`wants`, progress throttled); its id, or None."""
        if not self.wants(record, event):
            return None
        return self.record_delivery(record, event, recommendation, previous=previous, reason=reason)

    @unavailable_on_redis_errors
    def record_delivery(self, record: dict, event: str, recommendation: dict | None = None, *,
                        previous: str | None = None, reason: str | None = None) -> str:
        """Write the signed-to-be payload and its delivery record (the caller checked `wants`)."""
        notify = self.notify_of(record)
        assert notify is not None, record["id"]
        payload: dict[str, Any] = {
            "type": f"job.{event}",
            "timestamp": datetime.now(UTC),
            "sequence": record.get("notice_seq") or 0,
        }
        if previous is not None:
            payload["previous"] = previous
        if reason is not None:
            payload["reason"] = reason
        if recommendation is not None:
            payload["recommendation"] = recommendation
        payload["data"] = job_status(record, base_links(record["id"]))
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
        pipe.zadd(self._key("webhooks", "due"), {delivery_id: time.time()})  # until an attempt is made
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
        self.due(delivery_id, time.time())

    @unavailable_on_redis_errors
    def due(self, delivery_id: str, at: float | None) -> None:
        """When the delivery's next attempt is due (a retry's countdown), or None: no attempt is owed
        (delivered, given up). The caller sends the task after, so a send that fails is swept up."""
        if at is None:
            self.redis.zrem(self._key("webhooks", "due"), delivery_id)
        else:
            self.redis.zadd(self._key("webhooks", "due"), {delivery_id: at})

    @unavailable_on_redis_errors
    def overdue(self, older_than: float, limit: int = 100) -> list[str]:
        """Deliveries whose attempt was due more than `older_than` seconds ago and never came: their send
        failed (broker blip, a process that died in between) or their worker died mid-attempt. Each is
        restamped atomically first, so of several sweepers only one sends it again."""
        now = time.time()
        key = self._key("webhooks", "due")
        ids = self.redis.zrangebyscore(key, "-inf", f"({now - older_than}", start=0, num=limit)
        return [i for i in ids if self._restamp_due(keys=[key], args=[i, repr(now - older_than), repr(now)])]


class JobNotices:
    """A job's changes, turned into webhook deliveries and sent by name to the webhooks queue.

    `jobs.records` calls `changed` after every transition and `deleted` after a delete, so no caller can
    forget; `noticed` is for what is no transition. `send(delivery_id)` is the process's own Celery
    send (the API's `JobQueue.send_webhook`, the worker's app): jobs/ imports neither. Nothing here
    raises: a broker or Redis blip loses a notice (logged), never a job.
    """

    def __init__(self, deliveries: WebhookDeliveries, send: Callable[[str], None]) -> None:
        self.deliveries, self.send = deliveries, send

    def changed(self, record: dict, previous: str, reason: str | None = None) -> None:
        """After a transition; `record` is the job as the transition's own atomic step left it."""
        event = EVENT_OF_STATE.get(record["state"])
        if event is None:
            return
        if event == "succeeded" and record["kind"] == "range_test":  # the same change: the same sequence
            self._quietly(record, "range_test_done", lambda: self.deliveries.announce(
                record, "range_test_done", record["result"], previous=previous))
        if event == "failed":
            reason = record["error"]  # the one-line reason the record keeps
        self._quietly(record, event, lambda: self.deliveries.announce(record, event, previous=previous,
                                                                      reason=reason))

    def deleted(self, record: dict) -> None:
        """After a delete (by its owner, or by retention): the record as it was, one sequence on."""
        gone = {**record, "notice_seq": record["notice_seq"] + 1}
        self._quietly(record, "deleted", lambda: self.deliveries.announce(gone, "deleted"))

    def noticed(self, record: dict, event: str, recommendation: dict | None = None) -> None:
        """No transition: `queued` once sent (the record as created holds its sequence), or `progress`
        and a train job's `range_test_done`, which take the next sequence with a fresh snapshot."""
        def announce() -> str | None:
            if not self.deliveries.wants(record, event):
                return None
            snapshot = record if event == "queued" else self.deliveries.next_notice(record["id"])
            if snapshot is None:
                return None
            return self.deliveries.record_delivery(snapshot, event, recommendation)
        self._quietly(record, event, announce)

    def _quietly(self, record: dict, event: str, announce: Callable[[], str | None]) -> None:
        try:
            delivery_id = announce()
            if delivery_id is not None:
                self.send(delivery_id)
        except Exception as exc:  # a broker or Redis blip loses this notice, never the job
            log.warning("job %s: webhook %s not announced: %s", record["id"], event, exc)
