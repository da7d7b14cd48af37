"""Fair turns across keys: one key's hundreds of queued jobs must not starve another key's one job.

Celery's queue is first in, first out, so a job is not sent there when it is submitted. It waits in its
owner's list (`{p}:waiting:{queue}:{owner}`), its owner in the queue's ring (`{p}:turns:{queue}`), and
`dispatch` moves one job per owner in turn into the Celery queue while that queue holds fewer messages
than live workers consume it. The API dispatches right after a submit (an idle worker starts at once);
every worker dispatches on each monitor tick and whenever it takes a message, so the queue is refilled
as it drains. Both steps are Lua scripts (`jobs.scripts`): a stored job is always either waiting here,
or stamped `sent_at` and on its way, and the stale-queued sweep re-sends one whose sender died.
"""

from __future__ import annotations

import json
import time

import redis

from jobs import scripts
from jobs.keys import JobKeys
from jobs.queues import QUEUES, broker_key_prefix
from jobs.redis_errors import unavailable_on_redis_errors
from jobs.settings import Settings

LIVE_HEARTBEATS = 3  # a worker missing this many heartbeats no longer counts as a consumer


class Turns:
    """The owners' waiting lists and the ring that gives each owner its turn."""

    def __init__(self, client: redis.Redis, keys: JobKeys) -> None:
        self.redis, self.keys = client, keys
        self._push = client.register_script(scripts.TURN_PUSH_LUA)
        self._dispatch = client.register_script(scripts.TURN_DISPATCH_LUA)

    def push(self, pipe: redis.client.Pipeline, job_id: str, owner: str, queue: str) -> None:
        """Queue `job_id` behind the owner's other waiting jobs (inside the caller's transaction)."""
        self._push(keys=[self.keys.waiting(queue, owner), self.keys.turns(queue)], args=[job_id, owner],
                   client=pipe)

    @unavailable_on_redis_errors
    def dispatch(self, queue: str, *, live_within: float, max_running_per_key: int = 0) -> list[str]:
        """Take the next turns for `queue` (see the module docstring); the caller sends each id returned.

        `live_within`: seconds since a worker's last heartbeat for it to count as a consumer.
        `max_running_per_key` (0: no cap): an owner with that many jobs sent and not finished waits.
        """
        keys = [self.keys.turns(queue), broker_key_prefix(self.keys.prefix) + queue, self.keys.k("workers")]
        args = [self.keys.prefix, queue, repr(time.time()), live_within, max_running_per_key,
                json.dumps(sorted({*QUEUES, queue}))]
        return list(self._dispatch(keys=keys, args=args))

    def dispatch_by(self, settings: Settings, queue: str) -> list[str]:
        """`dispatch` with the deployment's settings (heartbeat period, running cap per key)."""
        return self.dispatch(queue, live_within=LIVE_HEARTBEATS * settings.heartbeat_seconds,
                             max_running_per_key=settings.max_running_jobs_per_key)

    @unavailable_on_redis_errors
    def forget(self, job_id: str, owner: str, queue: str) -> None:
        """Drop a job from its owner's waiting list (it was cancelled; dispatch would skip it anyway)."""
        self.redis.lrem(self.keys.waiting(queue, owner), 0, job_id)

    @unavailable_on_redis_errors
    def waiting_ids(self, queue: str) -> set[str]:
        """Every job id waiting its turn for `queue` (the stale sweep must not send these itself)."""
        owners = self.redis.lrange(self.keys.turns(queue), 0, -1)
        pipe = self.redis.pipeline(transaction=False)
        for owner in owners:
            pipe.lrange(self.keys.waiting(queue, owner), 0, -1)
        return {job_id for ids in pipe.execute() for job_id in ids} if owners else set()

    @unavailable_on_redis_errors
    def depth(self, queue: str) -> int:
        """Jobs waiting their turn for `queue` (not yet in the Celery queue)."""
        owners = self.redis.lrange(self.keys.turns(queue), 0, -1)
        pipe = self.redis.pipeline(transaction=False)
        for owner in owners:
            pipe.llen(self.keys.waiting(queue, owner))
        return sum(pipe.execute()) if owners else 0
