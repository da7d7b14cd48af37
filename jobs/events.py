"""A job's event log (a Redis Stream: SSE reads it, Last-Event-ID resumes) and its latest progress."""

from __future__ import annotations

import json
import time

import redis

from jobs import scripts
from jobs.keys import JobKeys
from jobs.redis_errors import unavailable_on_redis_errors

EVENTS_MAXLEN = 10_000
MAX_BLOCK_MS = 5_000  # below the client's socket timeout, so a blocking read never looks like a dead Redis


def xread_options(block_ms: int, count: int) -> dict[str, int]:
    """XREAD's count, and its block time when asked to wait (capped at MAX_BLOCK_MS)."""
    return {"count": count, "block": min(block_ms, MAX_BLOCK_MS)} if block_ms > 0 else {"count": count}


def parse_event_reply(reply: list | None) -> list[tuple[str, str, dict]]:
    """An XREAD reply on one event stream as (id, event, data) tuples."""
    if not reply:
        return []
    _, entries = reply[0]
    return [(entry_id, fields["event"], json.loads(fields["data"])) for entry_id, fields in entries]


class JobEvents:
    """Append to and read a job's event log; progress writes may be fenced by the job's lease."""

    def __init__(self, client: redis.Redis, keys: JobKeys) -> None:
        self.redis, self.keys = client, keys
        self._progress = client.register_script(scripts.PROGRESS_LUA)

    @unavailable_on_redis_errors
    def update_progress(
        self, job_id: str, progress: dict, metrics: dict | None = None, *, holder: str | None = None
    ) -> bool:
        """Store the latest progress (and metrics) and log a "progress" event; the caller throttles.

        With `holder` the write happens only while that worker holds the job's lease, checked inside
        Redis in the same step: a worker frozen between its own lease check and this write (SIGSTOP,
        a VM pause) cannot overwrite the progress of the worker that took the job over. Returns
        whether it wrote.
        """
        fields = {"progress": json.dumps(progress)}
        if metrics is not None:
            fields["metrics"] = json.dumps(metrics)
        data = json.dumps({"progress": progress, "metrics": metrics, "at": time.time()})
        if holder is not None:
            keys = [self.keys.lease(job_id), self.keys.job(job_id), self.keys.events(job_id)]
            return bool(self._progress(keys=keys, args=[holder, json.dumps(fields), data, EVENTS_MAXLEN]))
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self.keys.job(job_id), mapping=fields)
        pipe.xadd(self.keys.events(job_id), {"event": "progress", "data": data}, maxlen=EVENTS_MAXLEN)
        pipe.execute()
        return True

    @unavailable_on_redis_errors
    def append(self, job_id: str, event: str, data: dict) -> str:
        """Append to the job's event log (a Redis Stream, so SSE clients can resume by id)."""
        return self.redis.xadd(
            self.keys.events(job_id), {"event": event, "data": json.dumps(data)}, maxlen=EVENTS_MAXLEN
        )

    @unavailable_on_redis_errors
    def read(
        self, job_id: str, after: str = "0", block_ms: int = 0, count: int = 100
    ) -> list[tuple[str, str, dict]]:
        """Events after the id `after` ("0": from the start), as (id, event, data).

        With block_ms > 0 waits up to that long (capped at 5 s) for the first new event.
        """
        reply = self.redis.xread({self.keys.events(job_id): after}, **xread_options(block_ms, count))
        return parse_event_reply(reply)
