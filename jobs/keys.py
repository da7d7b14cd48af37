"""Names of the job layer's Redis keys, in one place (the layout is in `jobs.store`'s docstring)."""

from __future__ import annotations

import hashlib

from jobs.states import JobState


class JobKeys:
    """Every key starts with the configured prefix, so tests (and deployments) can share one Redis."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def k(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def job(self, job_id: str) -> str:
        return self.k("job", job_id)

    def events(self, job_id: str) -> str:
        return self.k("job", job_id, "events")

    def lease(self, job_id: str) -> str:
        return self.k("lease", job_id)

    def state(self, state: str) -> str:
        return self.k("state", state)

    def states(self) -> list[str]:
        """One set per JobState, in declaration order (the Lua scripts rely on that order)."""
        return [self.state(s.value) for s in JobState]

    def owner(self, owner: str, kind: str | None = None) -> str:
        return self.k("owner", owner) if kind is None else self.k("owner", owner, kind)

    def idempotency(self, owner: str, key: str) -> str:
        owner_hash = hashlib.sha256(owner.encode()).hexdigest()[:16]
        return self.k("idem", owner_hash, hashlib.sha256(key.encode()).hexdigest())

    def durations(self) -> str:
        return self.k("durations")

    def active(self, owner: str) -> str:
        """Set: the owner's jobs not yet final (queued, running, cancelling), for the per-key cap."""
        return self.k("active", owner)

    def finished(self) -> str:
        """Sorted set: finished job ids by finish time (retention removes the oldest)."""
        return self.k("finished")

    def waiting(self, queue: str, owner: str) -> str:
        """List: the owner's jobs of `queue` waiting their turn, oldest first (`jobs.turns`)."""
        return self.k("waiting", queue, owner)

    def turns(self, queue: str) -> str:
        """List: the ring of owners with jobs waiting for `queue`; the next turn is at the head."""
        return self.k("turns", queue)

    def seq(self) -> str:
        return self.k("seq")
