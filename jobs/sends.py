"""The sweeper's queries about sends: a queued job whose message never reached (or fell out of) its
queue is sent again; the queues' depths are read for /metrics."""

from __future__ import annotations

import re
import time

import redis

from jobs import scripts
from jobs.keys import JobKeys
from jobs.queues import broker_key_prefix
from jobs.redis_errors import unavailable_on_redis_errors
from jobs.states import JobState
from jobs.turns import Turns

JOB_ID = re.compile(r"job_[0-9a-f]{16}")  # `JobRecords.create` makes ids of this shape


class Sends:
    """When each job was last sent, which queued jobs no queue holds, and how deep each queue is."""

    def __init__(self, client: redis.Redis, keys: JobKeys, turns: Turns | None = None) -> None:
        self.redis, self.keys = client, keys
        self.turns = turns or Turns(client, keys)
        self._restamp_stale = client.register_script(scripts.RESTAMP_STALE_LUA)

    @unavailable_on_redis_errors
    def mark_sent(self, job_id: str) -> None:
        """Stamp `sent_at` after the job's task was sent (API submit, sweeper re-send, hand-back)."""
        self.redis.hset(self.keys.job(job_id), "sent_at", repr(time.time()))

    @unavailable_on_redis_errors
    def stale_queued(self, queue: str, older_than: float) -> list[str]:
        """Queued jobs of `queue` with no lease, not sent (or created) within `older_than` seconds, and
        whose id is in no message of that queue or of the broker's unacknowledged set: the API died
        between storing and sending them, or their message was lost. Callers re-send them after
        `restamp_stale` (which makes one of several sweepers the one that sends)."""
        ids = sorted(self.redis.smembers(self.keys.state(JobState.QUEUED.value)))
        if not ids:
            return []
        cutoff = time.time() - older_than
        pipe = self.redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(self.keys.job(job_id), "queue", "created_at", "sent_at")
            pipe.exists(self.keys.lease(job_id))
        replies = pipe.execute()
        candidates = []
        for job_id, (job_queue, created, sent), leased in zip(ids, replies[::2], replies[1::2], strict=True):
            last = float(sent or created or 0)
            if (job_queue or "") == queue and not leased and last < cutoff:
                candidates.append(job_id)
        if not candidates:
            return []
        waiting = self.ids_in_queue(queue)
        return [job_id for job_id in candidates if job_id not in waiting]

    def ids_in_queue(self, queue: str) -> set[str]:
        """Job ids named by the messages of `queue` and of the broker's unacknowledged set, and the ids
        waiting their owner's turn for `queue` (they are sent by `jobs.turns`, not by the sweep).

        Parsed once into a set (each message's `argsrepr` names its job id): the sweep runs every few
        seconds on every worker, and a substring search per queued job through the joined queue cost
        O(queued x queue length), seconds of CPU with 20,000 jobs waiting.
        """
        broker = broker_key_prefix(self.keys.prefix)
        found: set[str] = set()
        for message in (*self.redis.lrange(broker + queue, 0, -1), *self.redis.hvals(broker + "unacked")):
            found.update(JOB_ID.findall(message))
        return found | self.turns.waiting_ids(queue)

    @unavailable_on_redis_errors
    def restamp_stale(self, job_id: str, older_than: float) -> bool:
        """Atomically re-check that the job is still queued, unleased and stale, and stamp `sent_at`."""
        keys = [self.keys.job(job_id), self.keys.lease(job_id)]
        return bool(self._restamp_stale(keys=keys, args=[repr(time.time()), older_than]))

    @unavailable_on_redis_errors
    def queue_depth(self, queue: str) -> int:
        """Jobs waiting for a worker of `queue`: messages in the Celery queue (kombu keeps each queue as a
        Redis list) plus jobs still waiting their owner's turn (`jobs.turns`)."""
        return int(self.redis.llen(broker_key_prefix(self.keys.prefix) + queue)) + self.turns.depth(queue)
