"""Idempotency keys (IETF draft "The Idempotency-Key HTTP Header Field"): a retried submit with the same
key and body gets the first answer instead of a second job."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import redis

from jobs import scripts
from jobs.keys import JobKeys
from jobs.redis_errors import unavailable_on_redis_errors


def body_hash(body: Any) -> str:
    """Stable hash of a JSON body, for idempotency keys (key order does not matter)."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


class IdempotencyKeys:
    """Reserve, answer and drop idempotency keys, each step one atomic script."""

    def __init__(self, client: redis.Redis, keys: JobKeys) -> None:
        self.keys = keys
        self._begin = client.register_script(scripts.IDEM_BEGIN_LUA)
        self._finish = client.register_script(scripts.IDEM_FINISH_LUA)
        self._abort = client.register_script(scripts.IDEM_ABORT_LUA)

    @unavailable_on_redis_errors
    def begin(
        self, owner: str, key: str, body_hash: str, ttl: int = 86400, in_flight_ttl: int = 60
    ) -> tuple[str, dict | None]:
        """Reserve a key: "new" (go on), "replay" (first answer), "mismatch" (422) or "in_flight" (409).

        The reservation expires after `in_flight_ttl` seconds so a crashed request does not block its
        key for a day; `ttl` is how long a finished answer is kept (set by `finish`).
        """
        status, response = self._begin(
            keys=[self.keys.idempotency(owner, key)], args=[body_hash, min(ttl, in_flight_ttl)]
        )
        return status, (json.loads(response) if status == "replay" else None)

    @unavailable_on_redis_errors
    def finish(self, owner: str, key: str, body_hash: str, response: dict, ttl: int = 86400) -> None:
        """Store the answer a retry with the same key and body will get."""
        self._finish(keys=[self.keys.idempotency(owner, key)], args=[body_hash, json.dumps(response), ttl])

    @unavailable_on_redis_errors
    def abort(self, owner: str, key: str, body_hash: str) -> None:
        """Drop a reservation whose request failed before creating anything, so a retry may proceed."""
        self._abort(keys=[self.keys.idempotency(owner, key)], args=[body_hash])
