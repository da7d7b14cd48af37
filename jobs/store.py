"""`JobStore`: one Redis connection and key prefix, and the job layer's parts built on them.

The API and the workers both write job state only through these parts, so every rule about a job's
life (which transitions exist, that final states never change, that one worker at a time runs a job)
is enforced in one place, atomically, by small Lua scripts (`jobs.scripts`). Each concern has its
own module and object:

    store.records      jobs.records      records, the state machine's transitions, durations
    store.events       jobs.events       the event log and the latest progress
    store.leases       jobs.leases       one worker at a time per job
    store.sends        jobs.sends        the sweeper's re-sends, queue depths
    store.turns        jobs.turns        fair turns across keys: waiting lists, the ring, dispatch
    store.idempotency  jobs.idempotency  Idempotency-Key reservations and stored answers
    store.webhooks     jobs.webhooks     webhook deliveries (with settings), announced by every transition

A store built with `send_webhook` (the API's and the workers') announces each transition to the job's
webhook from `store.records` itself; one built without (tests, scripts) announces nothing.

Key layout (every key starts with the configured prefix, so tests can share one Redis):

    {p}:job:{id}                 hash: the job record (JSON-encoded fields where structured)
    {p}:job:{id}:events          stream: "state" and "progress" events (SSE reads it, Last-Event-ID resumes)
    {p}:lease:{id}               string: worker id holding the job, with a TTL (the lease)
    {p}:owner:{owner}            sorted set: the owner's job ids by creation sequence
    {p}:owner:{owner}:{kind}     sorted set: the same, one kind only
    {p}:state:{state}            set: job ids in that state (counts, the sweeper)
    {p}:active:{owner}           set: the owner's jobs not final yet (the per-key caps)
    {p}:waiting:{queue}:{owner}  list: the owner's submitted jobs waiting their turn (`jobs.turns`)
    {p}:turns:{queue}            list: the ring of owners with jobs waiting for that queue
    {p}:idem:{owner-hash}:{key}  hash: an idempotency key's body hash, status and stored response
    {p}:worker:{id}, {p}:workers worker liveness (hash per worker, sorted set by last seen): `jobs.workers`
    {p}:canary:{token}           a worker's reply to a readiness canary task: `jobs.workers`
    {p}:durations                hash: cumulative job-duration histogram, "kind|state|le<i>", "|count", "|sum"
    {p}:broker:...               the Celery/kombu queues (see `broker_transport_options`)
"""

from __future__ import annotations

from collections.abc import Callable

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from jobs.events import JobEvents
from jobs.idempotency import IdempotencyKeys
from jobs.keys import JobKeys
from jobs.leases import Leases
from jobs.records import JobRecords
from jobs.redis_errors import require_text_client, unavailable_on_redis_errors
from jobs.sends import Sends
from jobs.settings import Settings
from jobs.turns import Turns
from jobs.webhooks import JobNotices, WebhookDeliveries


class JobStore:
    """The parts of the job layer on one Redis client; it holds no job logic of its own."""

    def __init__(self, redis: redis.Redis, prefix: str = "clr", *, settings: Settings | None = None,
                 send_webhook: Callable[[str], None] | None = None) -> None:
        require_text_client(redis, "JobStore")
        self.redis = redis
        self.prefix = prefix
        self.keys = JobKeys(prefix)
        self.webhooks = WebhookDeliveries(redis, prefix, settings) if settings is not None else None
        notices = JobNotices(self.webhooks, send_webhook) if self.webhooks and send_webhook else None
        self.turns = Turns(redis, self.keys)
        self.records = JobRecords(redis, self.keys, notices, self.turns)
        self.events = JobEvents(redis, self.keys)
        self.leases = Leases(redis, self.keys)
        self.sends = Sends(redis, self.keys, self.turns)
        self.idempotency = IdempotencyKeys(redis, self.keys)

    @classmethod
    def from_settings(cls, settings: Settings, send_webhook: Callable[[str], None] | None = None) -> JobStore:
        """A store on its own connection pool; short timeouts and retries so an outage is a fast 503.

        `send_webhook(delivery_id)` sends `clr.deliver_webhook` by name (the caller's Celery app): with
        it, every transition made through this store announces itself to the job's webhook."""
        client = redis.Redis.from_url(
            settings.redis_url,
            decode_responses=True,
            socket_timeout=10,
            socket_connect_timeout=2,
            health_check_interval=15,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
        )
        return cls(client, settings.key_prefix, settings=settings, send_webhook=send_webhook)

    def ping(self) -> bool:
        """True when Redis answers; never raises."""
        try:
            return bool(self.redis.ping())
        except redis.RedisError:
            return False

    @unavailable_on_redis_errors
    def delete_all(self) -> int:
        """Remove every key under this prefix (tests; never on a shared prefix)."""
        removed = 0
        for key in self.redis.scan_iter(match=f"{self.prefix}:*", count=1000):
            removed += self.redis.delete(key)
        return removed
