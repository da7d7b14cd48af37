"""Job leases: a job runs in at most one worker at a time, and a lapsed lease is how the sweeper
learns that a worker died or hung."""

from __future__ import annotations

import redis

from jobs import scripts
from jobs.keys import JobKeys
from jobs.redis_errors import unavailable_on_redis_errors
from jobs.states import JobState


class Leases:
    """Claim, renew and release a job's lease (atomic scripts); who holds it; what should be running."""

    def __init__(self, client: redis.Redis, keys: JobKeys) -> None:
        self.redis, self.keys = client, keys
        self._claim = client.register_script(scripts.CLAIM_LUA)
        self._renew = client.register_script(scripts.RENEW_LUA)
        self._release = client.register_script(scripts.RELEASE_LUA)

    @unavailable_on_redis_errors
    def claim(self, job_id: str, worker_id: str, lease_seconds: float) -> bool:
        """Take the job's lease if nobody holds it; counts a delivery when it succeeds.

        Also counts a crash when the previous delivery did not `release` (its worker died or hung), so
        the delivery cap fails only jobs that keep killing their worker, not ones handed back cleanly.
        """
        ms = max(1, int(lease_seconds * 1000))
        return bool(self._claim(keys=[self.keys.lease(job_id), self.keys.job(job_id)], args=[worker_id, ms]))

    @unavailable_on_redis_errors
    def renew(self, job_id: str, worker_id: str, lease_seconds: float) -> bool:
        """Extend the lease; False if it lapsed or another worker holds it (then stop training)."""
        ms = max(1, int(lease_seconds * 1000))
        return bool(self._renew(keys=[self.keys.lease(job_id)], args=[worker_id, ms]))

    @unavailable_on_redis_errors
    def release(self, job_id: str, worker_id: str) -> None:
        """Give the lease up, only if this worker still holds it; marks the delivery as ended cleanly."""
        self._release(keys=[self.keys.lease(job_id), self.keys.job(job_id)], args=[worker_id])

    @unavailable_on_redis_errors
    def holder(self, job_id: str) -> str | None:
        """The worker id holding the job's lease, or None when nobody does."""
        return self.redis.get(self.keys.lease(job_id))

    @unavailable_on_redis_errors
    def running_jobs(self) -> list[str]:
        """Jobs that some worker should be running (running or cancelling), for the sweeper."""
        return sorted(
            self.redis.sunion(self.keys.state(JobState.RUNNING.value), self.keys.state(JobState.CANCELLING.value))
        )
