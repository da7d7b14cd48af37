"""Worker liveness and the readiness canary, in Redis.

Kept apart from `JobStore` because it is about processes, not jobs: workers report here that they live,
what they run and that their consumer takes messages, and `/readyz` reads it to decide whether anything
would run a job sent now. Nothing here touches a job record or the state machine. Same Redis, same key
prefix and the same outage rule as the store (connection trouble raises `StoreUnavailable`, a 503).

Keys (under the store's prefix; see `jobs.store` for the whole layout):

    {p}:worker:{id}      hash: worker_id, queue, last_seen, job_id, pid, last_task_at (expires after a day)
    {p}:workers          sorted set: worker ids by last seen
    {p}:canary:{token}   string: JSON reply of the worker that took the `clr.ping(token)` canary task
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis

from jobs.redis_errors import require_text_client, unavailable_on_redis_errors

WORKER_RECORD_TTL = 24 * 3600


class WorkerRegistry:
    """Heartbeats of worker processes and their replies to canary tasks."""

    def __init__(self, redis: redis.Redis, prefix: str = "clr") -> None:
        require_text_client(redis, "WorkerRegistry")
        self.redis = redis
        self.prefix = prefix

    def _k(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    @unavailable_on_redis_errors
    def record_heartbeat(
        self, worker_id: str, queue: str, *, job_id: str | None = None, took_task: bool = False
    ) -> None:
        """Note that a worker lives, what it runs, and (took_task) that its consumer just took a message.

        A busy `-c 1` worker cannot answer `inspect ping`, so its lease thread reports here instead; an
        idle worker proves it consumes by taking `clr.ping` canary tasks (`took_task`).
        """
        now = time.time()
        fields: dict[str, Any] = {
            "worker_id": worker_id,
            "queue": queue,
            "last_seen": repr(now),
            "job_id": job_id or "",
            "pid": os.getpid(),
        }
        if took_task:
            fields["last_task_at"] = repr(now)
        key = self._k("worker", worker_id)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(key, mapping=fields)
        pipe.expire(key, WORKER_RECORD_TTL)
        pipe.zadd(self._k("workers"), {worker_id: now})
        pipe.zremrangebyscore(self._k("workers"), "-inf", now - WORKER_RECORD_TTL)
        pipe.execute()

    @unavailable_on_redis_errors
    def live_workers(self, max_age: float) -> list[dict]:
        """Workers seen within `max_age` seconds, each {worker_id, queue, last_seen, last_task_at, job_id, pid}."""
        ids = self.redis.zrangebyscore(self._k("workers"), time.time() - max_age, "+inf")
        pipe = self.redis.pipeline(transaction=False)
        for worker_id in ids:
            pipe.hgetall(self._k("worker", worker_id))
        workers = []
        for raw in pipe.execute():
            if not raw:
                continue
            workers.append(
                {
                    "worker_id": raw["worker_id"],
                    "queue": raw["queue"],
                    "last_seen": float(raw["last_seen"]),
                    "last_task_at": float(raw["last_task_at"]) if raw.get("last_task_at") else None,
                    "job_id": raw.get("job_id") or None,
                    "pid": int(raw.get("pid") or 0),
                }
            )
        return workers

    def proven_workers(self, max_age: float, queue: str | None = None) -> list[dict]:
        """Live workers that demonstrably take work: busy with a job, or took a task within `max_age`."""
        now = time.time()
        return [
            w
            for w in self.live_workers(max_age)
            if (queue is None or w["queue"] == queue)
            and (w["job_id"] or (w["last_task_at"] is not None and now - w["last_task_at"] <= max_age))
        ]

    @unavailable_on_redis_errors
    def record_canary(self, token: str, worker_id: str, queue: str, ttl: int = 600) -> None:
        """A worker's answer to the canary task `clr.ping(token)`."""
        reply = json.dumps({"worker_id": worker_id, "queue": queue, "at": time.time()})
        self.redis.set(self._k("canary", token), reply, ex=ttl)

    @unavailable_on_redis_errors
    def canary(self, token: str) -> dict | None:
        """The reply to a canary sent with `token`, or None while no worker has taken it."""
        reply = self.redis.get(self._k("canary", token))
        return json.loads(reply) if reply else None
