"""Objects whose record is already gone but whose delete failed (the store was down): retried later.

Deleting a job or dataset removes its record first, so nothing the API lists points at the objects any
more; if removing the objects then fails, their key (or run-folder prefix) goes into a Redis sorted set
scored by the next attempt's time. A worker's sweeper calls `retry_due` every sweep; each failure
doubles the wait (up to `MAX_BACKOFF_S`), so an outage costs a few requests, not a storm.

    {p}:storage:pending_deletes          zset: key or prefix (ending in '/') -> next attempt (unix s)
    {p}:storage:pending_deletes:tries    hash: key or prefix -> failed attempts
"""

from __future__ import annotations

import logging
import time

import redis

from jobs.storage import ObjectStore, StorageUnavailable

log = logging.getLogger(__name__)

FIRST_BACKOFF_S = 5.0
MAX_BACKOFF_S = 600.0


class PendingDeletes:
    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.redis = client
        self.key = f"{prefix}:storage:pending_deletes"
        self.tries_key = f"{self.key}:tries"

    def add(self, target: str, delay: float = FIRST_BACKOFF_S) -> None:
        """Remember `target` (an object key, or a prefix ending in '/') for a later delete."""
        self.redis.zadd(self.key, {target: time.time() + delay})
        log.warning("object delete of %s deferred: the store did not answer", target)

    def pending(self) -> list[str]:
        return sorted(self.redis.zrange(self.key, 0, -1))

    def retry_due(self, objects: ObjectStore, limit: int = 100) -> int:
        """Try the deletes that are due; returns how many succeeded. Never raises for the store."""
        due = self.redis.zrangebyscore(self.key, "-inf", time.time(), start=0, num=limit)
        done = 0
        for target in due:
            try:
                delete_target(objects, target)
            except StorageUnavailable as exc:
                tries = int(self.redis.hincrby(self.tries_key, target, 1))
                wait = min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2 ** tries)
                self.redis.zadd(self.key, {target: time.time() + wait})
                log.info("object delete of %s failed again (%d tries, next in %.0f s): %s", target, tries, wait, exc)
                continue
            self.redis.zrem(self.key, target)
            self.redis.hdel(self.tries_key, target)
            done += 1
        return done


def delete_target(objects: ObjectStore, target: str) -> None:
    """Delete one object key, or every object under a prefix ending in '/'."""
    if target.endswith("/"):
        objects.delete_prefix(target)
    else:
        objects.delete(target)


def delete_or_defer(objects: ObjectStore, pending: PendingDeletes, target: str) -> bool:
    """Delete now; if the store is down, leave it to the sweeper. True if deleted now."""
    try:
        delete_target(objects, target)
        return True
    except StorageUnavailable:
        pending.add(target)
        return False
